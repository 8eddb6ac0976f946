-- Extend a lease if the caller still holds it.
-- Returns 1 if extended, 0 if the lease is gone or held by another owner.

local lease_key = KEYS[1]  -- lease:{name}

local owner = ARGV[1]
local ttl_ms = ARGV[2]

if redis.call('GET', lease_key) == owner then
  return redis.call('PEXPIRE', lease_key, ttl_ms)
end
return 0
