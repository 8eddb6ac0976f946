-- Assign a job to a worker if its epoch is still the one the distributor read:
-- open a new epoch, count an attempt, move the job between workers' open-job sets
-- and record the dispatch envelope in the causal chain (field link:{epoch}:a of the record).
-- Returns one of
--   {'ok', epoch}                  assigned; epoch is the new one
--   {'redo', epoch, assignee}      this same dispatch message assigned it already
--   {'stale', epoch}               someone else moved the job; epoch is the current one
--   {'exhausted', epoch, attempts} no attempt left; nothing changed
--   {'final', status}              the job is COMPLETED, FAILED, CANCELED or ABANDONED
-- (A job waiting for input is 'stale' here: only resume_job moves it on.)
--   {'missing'}                    there is no such job

local job_key = KEYS[1]        -- job:{id}
local open_jobs_key = KEYS[2]  -- jobs:open
local counts_key = KEYS[3]     -- jobs:count
local log_key = KEYS[4]        -- joblog:{id}

local job_id = ARGV[1]
local expected_epoch = tonumber(ARGV[2])
local worker_id = ARGV[3]
local now_ms = ARGV[4]
local max_attempts = tonumber(ARGV[5])
local worker_jobs_prefix = ARGV[6]  -- worker:jobs:
local channel = ARGV[7]
local dispatch_id = ARGV[8]
local chain_link = ARGV[9]
local log_cap = ARGV[10]

local r = redis.call('HMGET', job_key, 'status', 'epoch', 'assignee', 'attempts', 'dispatch_msg')
local status, assignee, dispatch_msg = r[1], r[3], r[5]
if not status then return {'missing'} end
if status == 'COMPLETED' or status == 'FAILED' or status == 'ABANDONED' or status == 'CANCELED' then
  return {'final', status}
end
local epoch = tonumber(r[2])
if epoch ~= expected_epoch or status == 'INPUT_REQUIRED' then
  if dispatch_msg == dispatch_id and status == 'ASSIGNED' then
    return {'redo', tostring(epoch), assignee}
  end
  return {'stale', tostring(epoch)}
end
local attempts = tonumber(r[4]) + 1
if attempts > max_attempts then
  return {'exhausted', tostring(epoch), tostring(attempts - 1)}
end
epoch = epoch + 1
redis.call('HSET', job_key, 'status', 'ASSIGNED', 'epoch', epoch, 'assignee', worker_id,
  'attempts', attempts, 'updated_ms', now_ms, 'dispatch_msg', dispatch_id,
  string.format('link:%06d:a', epoch), chain_link)
if assignee and assignee ~= '' then redis.call('SREM', worker_jobs_prefix .. assignee, job_id) end
redis.call('SADD', worker_jobs_prefix .. worker_id, job_id)
redis.call('ZADD', open_jobs_key, now_ms, job_id)
redis.call('PUBLISH', channel, cjson.encode({job_id=job_id, status='ASSIGNED', epoch=epoch,
  assignee=worker_id}))
redis.call('XADD', log_key, 'MAXLEN', '~', log_cap, '*', 'k', 'status', 'ms', now_ms,
  'd', cjson.encode({status='ASSIGNED', epoch=epoch, worker=worker_id}))
return {'ok', tostring(epoch)}
