-- Give a lease back if the caller still holds it.
-- Returns 1 if released, 0 if the lease is gone or held by another owner.

local lease_key = KEYS[1]  -- lease:{name}

local owner = ARGV[1]

if redis.call('GET', lease_key) == owner then
  return redis.call('DEL', lease_key)
end
return 0
