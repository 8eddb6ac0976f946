-- Take a lease if it is free (SET NX PX) and draw a new fencing token for it.
-- Returns the fencing token, or 0 if someone else holds the lease.

local lease_key = KEYS[1]  -- lease:{name}
local fence_key = KEYS[2]  -- fence:{name}

local owner = ARGV[1]
local ttl_ms = ARGV[2]

if redis.call('SET', lease_key, owner, 'NX', 'PX', ttl_ms) then
  return redis.call('INCR', fence_key)
end
return 0
