-- Write hash fields only if the hash's version is still the one the writer read;
-- count the write or the conflict, and announce a write on a channel.
-- Returns 1 if written, 0 on a version conflict (nothing written but the counter).

local hash_key = KEYS[1]   -- shared:distributor:{id}
local stats_key = KEYS[2]  -- stats:shared_state

local expected_version = tonumber(ARGV[1])
local new_version = ARGV[2]
local channel = ARGV[3]  -- '' for no announcement
local message = ARGV[4]
-- ARGV[5..]: field, value, field, value, ... to write

local current = tonumber(redis.call('HGET', hash_key, 'version') or '0')
if current ~= expected_version then
  redis.call('HINCRBY', stats_key, 'conflicts', 1)
  return 0
end
redis.call('HSET', hash_key, 'version', new_version, unpack(ARGV, 5))
redis.call('HINCRBY', stats_key, 'writes', 1)
if channel ~= '' then redis.call('PUBLISH', channel, message) end
return 1
