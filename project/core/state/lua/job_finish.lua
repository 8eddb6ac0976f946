-- Record a job's final status and result, once, if the epoch is still current:
-- close it (out of jobs:open and its worker's open-job set), let the record
-- (its chain is in it), its event log and an agent's checkpoints expire, and announce it with
-- the signed EVENT the coordinator's view verifies.
-- Returns one of
--   {'recorded', status}                 this call recorded the result
--   {'already', status, result, error}   a result was recorded first (or the job was
--                                         canceled); it is returned
--   {'stale', status}                    another epoch, or not in ``only_from``; status is
--                                         the current one
--   {'missing'}                          there is no such job

local job_key = KEYS[1]        -- job:{id}
local open_jobs_key = KEYS[2]  -- jobs:open
local counts_key = KEYS[3]     -- jobs:count
local waiting_key = KEYS[4]    -- jobs:waiting (left to the caller: it drops a timed-out job
                               -- from it once the result is published)
local log_key = KEYS[5]        -- joblog:{id}
-- KEYS[6..11]: the job's checkpoint keys (expired with it when it ran as an agent)

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
local only_from = ARGV[13]   -- finish only from this status ('' = any unfinished status)
local log_cap = ARGV[14]

local r = redis.call('HMGET', job_key, 'status', 'epoch', 'assignee', 'result', 'error', 'kind')
local status, assignee = r[1], r[3]
if not status then return {'missing'} end
if tonumber(r[2]) ~= epoch then return {'stale', status} end
if status == 'COMPLETED' or status == 'FAILED' or status == 'ABANDONED' or status == 'CANCELED' then
  return {'already', status, r[4] or '', r[5] or ''}
end
if only_from ~= '' and status ~= only_from then return {'stale', status} end
-- A parked job waits for a person: only its input timeout ends it here (cancel has its own
-- script); a late message of its epoch (a re-route's "no worker") does not.
if status == 'INPUT_REQUIRED' and only_from ~= 'INPUT_REQUIRED' then return {'stale', status} end
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
redis.call('HDEL', job_key, 'interrupts', 'resume')
if assignee and assignee ~= '' then redis.call('SREM', worker_jobs_prefix .. assignee, job_id) end
redis.call('ZREM', open_jobs_key, job_id)
redis.call('HINCRBY', counts_key, final_status, 1)
redis.call('EXPIRE', job_key, result_ttl_s)
redis.call('XADD', log_key, 'MAXLEN', '~', log_cap, '*', 'k', 'status', 'ms', now_ms, 'd',
  '{"status":"' .. final_status .. '","epoch":' .. epoch .. ',"result":' .. result_json ..
  ',"error":' .. error_json .. '}')
redis.call('EXPIRE', log_key, result_ttl_s)
if r[6] == 'agent' then
  for i = 6, #KEYS do redis.call('EXPIRE', KEYS[i], result_ttl_s) end
end
redis.call('PUBLISH', channel, cjson.encode({job_id=job_id, status=final_status,
  epoch=epoch, assignee=assignee or '', event=event_json}))
return {'recorded', final_status}
