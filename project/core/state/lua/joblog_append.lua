-- Append progress events of a running job to its event log, if its run is still current:
-- the job must be IN_PROGRESS at the writer's epoch. A stale or canceled run writes nothing
-- and learns it here (the agent runner stops its graph).
-- Returns the current status when nothing was written, else ''.

local job_key = KEYS[1]  -- job:{id}
local log_key = KEYS[2]  -- joblog:{id}

local epoch = ARGV[1]
local log_cap = ARGV[2]
local now_ms = ARGV[3]
-- ARGV[4..]: kind, data json, kind, data json, ...

local r = redis.call('HMGET', job_key, 'epoch', 'status')
if r[1] ~= epoch or r[2] ~= 'IN_PROGRESS' then return r[2] or 'MISSING' end
for i = 4, #ARGV, 2 do
  redis.call('XADD', log_key, 'MAXLEN', '~', log_cap, '*', 'k', ARGV[i], 'ms', now_ms, 'd', ARGV[i + 1])
end
return ''
