-- Record an agent's heartbeat at Redis's own clock (TIME), so liveness never compares
-- agents' wall clocks; re-admit it (and announce that) if it was marked dead. With a
-- card, register the agent first (card stored, announced as registered). Keep the
-- agent's degraded mark: set while Redis refuses writes or the agent had a write
-- refused lately, dropped otherwise.
--
-- A heartbeat goes through even while Redis is full (maxmemory with noeviction): the
-- probe finds out whether Redis takes writes and changes nothing if refused; then the
-- first write is a removal (SREM), which a full Redis takes, and a script that has
-- written is never stopped halfway, so the rest follows. It overwrites the agent's
-- own entries (same size), so it does not grow Redis beyond one small mark per agent.
-- Returns {1 if the agent had been marked dead else 0, the probe's refusal or ''}.

local heartbeats_key = KEYS[1]  -- agents:heartbeats
local dead_key = KEYS[2]        -- agents:dead
local cards_key = KEYS[3]       -- agents:cards
local degraded_key = KEYS[4]    -- agents:degraded

local agent_id = ARGV[1]
local channel = ARGV[2]
local card_json = ARGV[3]       -- '' for a plain heartbeat
local refused_ago_ms = ARGV[4]  -- '' unless a write of the agent was refused lately
local refused_error = ARGV[5]   -- what Redis said then

redis.replicate_commands()  -- Redis 6.2: replicate effects, so TIME may precede writes
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local probe = redis.pcall('ZADD', heartbeats_key, 'XX', now_ms, agent_id)
local refused = ''
if type(probe) == 'table' and probe.err then refused = probe.err end

local was_dead = redis.call('SREM', dead_key, agent_id)
redis.call('ZADD', heartbeats_key, now_ms, agent_id)
if refused ~= '' then
  redis.call('HSET', degraded_key, agent_id, cjson.encode({at_ms=now_ms, error=refused}))
elseif refused_ago_ms ~= '' then
  redis.call('HSET', degraded_key, agent_id,
    cjson.encode({at_ms=now_ms - tonumber(refused_ago_ms), error=refused_error}))
else
  redis.call('HDEL', degraded_key, agent_id)
end

if card_json ~= '' then
  redis.call('HSET', cards_key, agent_id, card_json)
  redis.call('PUBLISH', channel, cjson.encode({agent_id=agent_id, event='registered'}))
  return {0, refused}
end
if was_dead == 1 then
  redis.call('PUBLISH', channel, cjson.encode({agent_id=agent_id, event='readmitted'}))
  return {1, refused}
end
return {0, refused}
