-- Record a job's final status and result, once, if the epoch is still current:
-- close it (out of jobs:open and its worker's open-job set), let the record and
-- (its chain is in it) expire, and announce it with the signed EVENT the coordinator's view verifies.
-- Returns one of
--   {'recorded', status}                 this call recorded the result
--   {'already', status, result, error}   a result was recorded first; it is returned
--   {'stale', status}                    another epoch; status is the current one
--   {'missing'}                          there is no such job

local job_key = KEYS[1]        -- job:{id}
local open_jobs_key = KEYS[2]  -- jobs:open
local counts_key = KEYS[3]     -- jobs:count

local job_id = ARGV[1]
local epoch = tonumber(ARGV[2])
local final_status = ARGV[3]
local result_json = ARGV[4]
local error_json = ARGV[5]
local now_ms = ARGV[6]
local result_ttl_s = ARGV[7]
local worker_jobs_prefix = ARGV[8]  -- worker:jobs:
local channel = ARGV[9]
local chain_link = ARGV[10]  -- '' for none
local event_link = ARGV[11]  -- the signed EVENT's chain link; '' for none
local event_json = ARGV[12]  -- the signed EVENT itself, for the announcement; '' for none

local r = redis.call('HMGET', job_key, 'status', 'epoch', 'assignee', 'result', 'error')
local status, assignee = r[1], r[3]
if not status then return {'missing'} end
if tonumber(r[2]) ~= epoch then return {'stale', status} end
if status == 'COMPLETED' or status == 'FAILED' or status == 'ABANDONED' then
  return {'already', status, r[4] or '', r[5] or ''}
end
local fields = {'status', final_status, 'result', result_json, 'error', error_json,
  'updated_ms', now_ms, 'finished_ms', now_ms}
if chain_link ~= '' then
  fields[#fields + 1] = string.format('link:%06d:c', epoch)
  fields[#fields + 1] = chain_link
end
if event_link ~= '' then
  fields[#fields + 1] = string.format('link:%06d:d', epoch)
  fields[#fields + 1] = event_link
end
redis.call('HSET', job_key, unpack(fields))
if assignee and assignee ~= '' then redis.call('SREM', worker_jobs_prefix .. assignee, job_id) end
redis.call('ZREM', open_jobs_key, job_id)
redis.call('HINCRBY', counts_key, final_status, 1)
redis.call('EXPIRE', job_key, result_ttl_s)
redis.call('PUBLISH', channel, cjson.encode({job_id=job_id, status=final_status,
  epoch=epoch, assignee=assignee or '', event=event_json}))
return {'recorded', final_status}
