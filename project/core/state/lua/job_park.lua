-- Park an agent that called interrupt(): IN_PROGRESS -> INPUT_REQUIRED at the same epoch.
-- Its pending interrupts are recorded, its worker's slot is free (the job leaves that
-- worker's open-job set, so the worker's death does not re-route it, and jobs:open, so it is
-- not "stuck"), and with an input timeout it joins jobs:waiting, scored by that deadline.
-- Returns {'parked'}, {'stale', status} (another epoch, or not running) or {'missing'}.

local job_key = KEYS[1]        -- job:{id}
local open_jobs_key = KEYS[2]  -- jobs:open
local waiting_key = KEYS[3]    -- jobs:waiting
local log_key = KEYS[4]        -- joblog:{id}

local job_id = ARGV[1]
local epoch = tonumber(ARGV[2])
local interrupts_json = ARGV[3]
local now_ms = tonumber(ARGV[4])
local worker_jobs_prefix = ARGV[5]  -- worker:jobs:
local channel = ARGV[6]
local chain_link = ARGV[7]  -- '' for none
local log_cap = ARGV[8]

local r = redis.call('HMGET', job_key, 'status', 'epoch', 'assignee', 'input_timeout_s')
local status, assignee = r[1], r[3]
if not status then return {'missing'} end
if tonumber(r[2]) ~= epoch or status ~= 'IN_PROGRESS' then return {'stale', status} end
local fields = {'status', 'INPUT_REQUIRED', 'interrupts', interrupts_json, 'updated_ms', now_ms}
if chain_link ~= '' then
  fields[#fields + 1] = string.format('link:%06d:c', epoch)
  fields[#fields + 1] = chain_link
end
if r[4] then
  -- On Redis's clock, as the supervisor reads it (no two agents' wall clocks compared).
  local t = redis.call('TIME')
  local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    + math.floor(tonumber(r[4]) * 1000)
  fields[#fields + 1] = 'input_deadline_ms'
  fields[#fields + 1] = deadline
  redis.call('ZADD', waiting_key, deadline, job_id)
end
redis.call('HSET', job_key, unpack(fields))
redis.call('HDEL', job_key, 'resume')
if assignee and assignee ~= '' then redis.call('SREM', worker_jobs_prefix .. assignee, job_id) end
redis.call('ZREM', open_jobs_key, job_id)
redis.call('XADD', log_key, 'MAXLEN', '~', log_cap, '*', 'k', 'status', 'ms', now_ms, 'd',
  '{"status":"INPUT_REQUIRED","epoch":' .. epoch .. ',"interrupts":' .. interrupts_json .. '}')
redis.call('PUBLISH', channel, cjson.encode({job_id=job_id, status='INPUT_REQUIRED',
  epoch=epoch, assignee=assignee or ''}))
return {'parked'}
