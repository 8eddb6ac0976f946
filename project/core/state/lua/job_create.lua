-- Record a new PENDING job, unless a record with its id exists already.
-- Either way the job's submit intent is dropped: the submit has been handled.
-- Returns 1 if the record was created, 0 if it existed (nothing else changed).

local job_key = KEYS[1]        -- job:{id}
local open_jobs_key = KEYS[2]  -- jobs:open
local counts_key = KEYS[3]     -- jobs:count
local intents_key = KEYS[4]    -- jobs:intents (hash job id -> the submit call)
local log_key = KEYS[5]        -- joblog:{id}
local owner_key = KEYS[6]      -- jobs:owner:{owner}; absent for a job without an owner

local job_id = ARGV[1]
local now_ms = ARGV[2]
local channel = ARGV[3]
local log_cap = ARGV[4]
local owner_cap = tonumber(ARGV[5])  -- the owner index keeps this many newest jobs
-- ARGV[6..]: field, value, field, value, ... of the new record

redis.call('HDEL', intents_key, job_id)
if redis.call('EXISTS', job_key) == 1 then return 0 end
redis.call('HSET', job_key, unpack(ARGV, 6))
redis.call('ZADD', open_jobs_key, now_ms, job_id)
if owner_key then
  -- Capped by count, not age: an agent may wait for input for days. Ids whose record
  -- expired are dropped by the reader (list_jobs).
  redis.call('ZADD', owner_key, now_ms, job_id)
  redis.call('ZREMRANGEBYRANK', owner_key, 0, -owner_cap - 1)
end
redis.call('XADD', log_key, 'MAXLEN', '~', log_cap, '*', 'k', 'status', 'ms', now_ms,
  'd', cjson.encode({status='PENDING', epoch=0}))
redis.call('HINCRBY', counts_key, 'PENDING', 1)
redis.call('PUBLISH', channel, cjson.encode({job_id=job_id, status='PENDING', epoch=0}))
return 1
