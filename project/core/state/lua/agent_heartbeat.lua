-- Record an agent's heartbeat at Redis's own clock (TIME), so liveness never compares
-- agents' wall clocks; re-admit it (and announce that) if it was marked dead. With a
-- card, register the agent first (card stored, announced as registered).
-- Returns 1 if the agent had been marked dead, else 0.

local heartbeats_key = KEYS[1]  -- agents:heartbeats
local dead_key = KEYS[2]        -- agents:dead
local cards_key = KEYS[3]       -- agents:cards

local agent_id = ARGV[1]
local channel = ARGV[2]
local card_json = ARGV[3]  -- '' for a plain heartbeat

redis.replicate_commands()  -- Redis 6.2: replicate effects, so TIME may precede writes
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

if card_json ~= '' then
  redis.call('HSET', cards_key, agent_id, card_json)
  redis.call('ZADD', heartbeats_key, now_ms, agent_id)
  redis.call('SREM', dead_key, agent_id)
  redis.call('PUBLISH', channel, cjson.encode({agent_id=agent_id, event='registered'}))
  return 0
end
redis.call('ZADD', heartbeats_key, now_ms, agent_id)
if redis.call('SREM', dead_key, agent_id) == 1 then
  redis.call('PUBLISH', channel, cjson.encode({agent_id=agent_id, event='readmitted'}))
  return 1
end
return 0
