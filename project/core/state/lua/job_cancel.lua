-- Cancel a job wherever it is short of final: it becomes CANCELED (final) at once, with
-- JobCanceledError as its error. A worker that holds it finds out at its next fenced write
-- or start (an agent at its next step boundary; a queued order is dropped on arrival).
-- Returns {'canceled', previous status, epoch, assignee, kind}, {'final', status} (nothing
-- changed) or {'missing'}.

local job_key = KEYS[1]        -- job:{id}
local open_jobs_key = KEYS[2]  -- jobs:open
local counts_key = KEYS[3]     -- jobs:count
local waiting_key = KEYS[4]    -- jobs:waiting
local log_key = KEYS[5]        -- joblog:{id}
-- KEYS[6..11]: the job's checkpoint keys

local job_id = ARGV[1]
local now_ms = ARGV[2]
local error_json = ARGV[3]
local result_ttl_s = ARGV[4]
local worker_jobs_prefix = ARGV[5]  -- worker:jobs:
local channel = ARGV[6]
local log_cap = ARGV[7]

local r = redis.call('HMGET', job_key, 'status', 'epoch', 'assignee', 'kind')
local status, epoch, assignee = r[1], r[2], r[3]
if not status then return {'missing'} end
if status == 'COMPLETED' or status == 'FAILED' or status == 'ABANDONED' or status == 'CANCELED' then
  return {'final', status}
end
redis.call('HSET', job_key, 'status', 'CANCELED', 'result', 'null', 'error', error_json,
  'updated_ms', now_ms, 'finished_ms', now_ms)
redis.call('HDEL', job_key, 'interrupts', 'resume')
if assignee and assignee ~= '' then redis.call('SREM', worker_jobs_prefix .. assignee, job_id) end
redis.call('ZREM', open_jobs_key, job_id)
redis.call('ZREM', waiting_key, job_id)
redis.call('HINCRBY', counts_key, 'CANCELED', 1)
redis.call('EXPIRE', job_key, result_ttl_s)
redis.call('XADD', log_key, 'MAXLEN', '~', log_cap, '*', 'k', 'status', 'ms', now_ms, 'd',
  '{"status":"CANCELED","epoch":' .. epoch .. ',"result":null,"error":' .. error_json .. '}')
redis.call('EXPIRE', log_key, result_ttl_s)
for i = 6, #KEYS do redis.call('EXPIRE', KEYS[i], result_ttl_s) end
redis.call('PUBLISH', channel, cjson.encode({job_id=job_id, status='CANCELED',
  epoch=tonumber(epoch), assignee=assignee or '', event=''}))
return {'canceled', status, epoch, assignee or '', r[4] or ''}
