-- Append a link to a job's causal chain unless it is there already. A link is a
-- pure function of its envelope, so the same envelope is the same string.
-- Returns 1 if appended, 0 if the link was there.

local chain_key = KEYS[1]  -- job:chain:{id}

local chain_link = ARGV[1]

if redis.call('LPOS', chain_key, chain_link) then return 0 end
redis.call('RPUSH', chain_key, chain_link)
return 1
