-- Count one retry of a job's run by its task type's retry policy, if that run is still the
-- job's (IN_PROGRESS at the run's epoch): a canceled or re-routed run learns here that it
-- must not retry.
-- Returns the new retry count, or -1 (nothing changed).

local job_key = KEYS[1]  -- job:{id}
local epoch = ARGV[1]

local r = redis.call('HMGET', job_key, 'epoch', 'status')
if r[1] ~= epoch or r[2] ~= 'IN_PROGRESS' then return -1 end
return redis.call('HINCRBY', job_key, 'retries', 1)
