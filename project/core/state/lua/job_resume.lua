-- Take a person's answer to a parked agent: INPUT_REQUIRED -> PENDING, at a new epoch, so
-- anything built for the parked epoch (a re-route request still waiting for a worker, say)
-- is stale from now on and cannot fail the job or take the answer's turn. The answer is kept
-- in the record until a worker takes it; the job is open again, so a lost dispatch is re-sent
-- by the health check.
-- Returns {'resumed', new epoch} or {'not_waiting', status} or {'missing'}.

local job_key = KEYS[1]        -- job:{id}
local open_jobs_key = KEYS[2]  -- jobs:open
local waiting_key = KEYS[3]    -- jobs:waiting
local log_key = KEYS[4]        -- joblog:{id}

local job_id = ARGV[1]
local resume_json = ARGV[2]
local now_ms = ARGV[3]
local message_json = ARGV[4]  -- the A2A message that answered, or ''
local channel = ARGV[5]
local log_cap = ARGV[6]

local r = redis.call('HMGET', job_key, 'status', 'epoch')
local status, epoch = r[1], r[2]
if not status then return {'missing'} end
if status ~= 'INPUT_REQUIRED' then return {'not_waiting', status} end
-- A resume starts a new turn: its dispatches and runs are counted afresh (poison jobs
-- are those whose runs kill their workers within one turn).
epoch = tonumber(epoch) + 1
redis.call('HSET', job_key, 'status', 'PENDING', 'epoch', epoch, 'resume', resume_json,
  'updated_ms', now_ms, 'attempts', 0, 'runs', 0)
if message_json ~= '' then redis.call('HSET', job_key, 'a2a_message', message_json) end
redis.call('HDEL', job_key, 'interrupts', 'input_deadline_ms')
redis.call('ZREM', waiting_key, job_id)
redis.call('ZADD', open_jobs_key, now_ms, job_id)
redis.call('XADD', log_key, 'MAXLEN', '~', log_cap, '*', 'k', 'status', 'ms', now_ms,
  'd', '{"status":"PENDING","epoch":' .. epoch .. ',"resumed":true}')
redis.call('PUBLISH', channel, cjson.encode({job_id=job_id, status='PENDING', epoch=epoch}))
return {'resumed', tostring(epoch)}
