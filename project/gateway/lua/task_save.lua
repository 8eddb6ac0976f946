-- Save a gateway task record (the A2A side of a job: its context, messages and the task
-- as last written), compare-and-set on the record's write counter.
-- Modes: 'create' (the record must not exist), 'cas' (its counter must be `expected`),
-- 'force' (a cancel: the record must exist, any counter).
-- `unlogged_end` is '1' for a terminal state the job's log did not write (the SDK's FAILED
-- after an error): a read lets the log override it (see store.py).
-- Returns the new counter, -1 on a conflict, or -2 if another caller owns the record.

local record_key = KEYS[1]  -- gateway:task:{id}
local index_key = KEYS[2]   -- gateway:tasks:{owner}

local mode = ARGV[1]
local expected = tonumber(ARGV[2])
local task_json = ARGV[3]
local owner = ARGV[4]
local task_id = ARGV[5]
local now_ms = tonumber(ARGV[6])
local ttl_s = tonumber(ARGV[7])
local unlogged_end = ARGV[8]

local current = redis.call('HMGET', record_key, 'counter', 'owner')
local counter = tonumber(current[1])
if counter and current[2] ~= owner then return -2 end
if mode == 'create' then
  if counter then return -1 end
  counter = 0
elseif mode == 'cas' then
  if counter == nil or counter ~= expected then return -1 end
elseif counter == nil then
  return -1
end
counter = counter + 1
redis.call('HSET', record_key, 'task', task_json, 'counter', counter, 'owner', owner,
  'updated_ms', now_ms)
if unlogged_end == '1' then
  redis.call('HSET', record_key, 'unlogged_end', '1')
else
  redis.call('HDEL', record_key, 'unlogged_end')
end
redis.call('EXPIRE', record_key, ttl_s)
if mode == 'create' then
  redis.call('ZADD', index_key, now_ms, task_id)
  redis.call('ZREMRANGEBYSCORE', index_key, '-inf', now_ms - ttl_s * 1000)
  redis.call('EXPIRE', index_key, ttl_s)
end
return counter
