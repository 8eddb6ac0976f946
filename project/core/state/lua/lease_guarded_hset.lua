-- Write hash fields only if the caller's fencing token is the newest one drawn for
-- the lease and not older than the last token that wrote the hash (field _fence).
-- Returns 1 if written, 0 if the token is stale (nothing written).

local hash_key = KEYS[1]
local fence_key = KEYS[2]  -- fence:{name}

local fencing_token = ARGV[1]
-- ARGV[2..]: field, value, field, value, ... to write

local newest = tonumber(redis.call('GET', fence_key) or '0')
if tonumber(fencing_token) ~= newest then return 0 end
local seen = tonumber(redis.call('HGET', hash_key, '_fence') or '0')
if tonumber(fencing_token) < seen then return 0 end
redis.call('HSET', hash_key, '_fence', fencing_token, unpack(ARGV, 2))
return 1
