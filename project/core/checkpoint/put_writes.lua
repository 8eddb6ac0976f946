-- Store the pending writes of one task against one checkpoint (RedisSaver.put_writes).
-- Ordinary writes are insert-if-absent (HSETNX); the special channels of LangGraph's
-- WRITES_IDX_MAP (error, scheduled, interrupt, resume) overwrite, like the reference savers.
local writes_index_key = KEYS[1] -- zset  ns\0cid\0task_id\0idx (score 0)
local writes_key = KEYS[2] -- hash  ns\0cid\0task_id\0idx -> write record
local write_count = tonumber(ARGV[1]) -- ARGV[2..] = write_count (member, record, overwrite)
-- Optional fence: KEYS[3] = the job's record, ARGV[2 + 3 * write_count] = the writer's epoch.
-- Nothing is written unless the job is IN_PROGRESS at that epoch (a stale or canceled run).
if KEYS[3] then
  local fence = redis.call('HMGET', KEYS[3], 'epoch', 'status')
  if fence[1] ~= ARGV[2 + 3 * write_count] or fence[2] ~= 'IN_PROGRESS' then
    return redis.error_reply('FENCED job is ' .. tostring(fence[2]) .. ' at epoch ' .. tostring(fence[1]))
  end
end

local members = {}
for i = 0, write_count - 1 do
  local member, record, overwrite = ARGV[2 + 3 * i], ARGV[3 + 3 * i], ARGV[4 + 3 * i]
  if overwrite == '1' then
    redis.call('HSET', writes_key, member, record)
  else
    redis.call('HSETNX', writes_key, member, record)
  end
  members[#members + 1] = 0
  members[#members + 1] = member
end
for first = 1, #members, 1000 do
  redis.call('ZADD', writes_index_key, unpack(members, first, math.min(first + 999, #members)))
end
return write_count
