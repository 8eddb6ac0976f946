-- Read, atomically, what the coordinator's live view starts from: unfinished jobs with
-- their status, how many jobs reached each status, the agents and the dead set; then
-- publish the view's marker, which separates the news already read from the news after.
-- Returns {{id, status, ...}, {status, count, ...}, {agent id, ...}, {dead agent id, ...}}.

local open_jobs_key = KEYS[1]  -- jobs:open
local counts_key = KEYS[2]     -- jobs:count
local cards_key = KEYS[3]      -- agents:cards
local dead_key = KEYS[4]       -- agents:dead

local job_prefix = ARGV[1]     -- job:
local sync_channel = ARGV[2]   -- events:sync:{view id}
local marker = ARGV[3]         -- the marker message (JSON)

local jobs = {}
for _, id in ipairs(redis.call('ZRANGE', open_jobs_key, 0, -1)) do
  local status = redis.call('HGET', job_prefix .. id, 'status')
  if status then
    jobs[#jobs + 1] = id
    jobs[#jobs + 1] = status
  end
end
local counts = redis.call('HGETALL', counts_key)
local agents = redis.call('HKEYS', cards_key)
local dead = redis.call('SMEMBERS', dead_key)
redis.call('PUBLISH', sync_channel, marker)
return {jobs, counts, agents, dead}
