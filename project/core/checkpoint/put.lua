-- Store one checkpoint of a thread and trim its namespace to the newest KEEP_LAST checkpoints.
-- Called by RedisSaver.put (one round trip) and, with an empty CHECKPOINT_ID, by prune.
-- Key layouts: see KEY_CHECKPOINT_* in project/core/constants.py. "\0" is a NUL byte.
local index_key = KEYS[1] -- zset  ns\0cid (score 0; lex order = checkpoint id order)
local data_key = KEYS[2] -- hash  ns\0cid -> checkpoint record
local refs_key = KEYS[3] -- hash  ns\0cid -> msgpack array of the blob fields it references
local blobs_key = KEYS[4] -- hash  ns\0version\0channel -> typed channel value
local writes_index_key = KEYS[5] -- zset  ns\0cid\0task_id\0idx (score 0)
local writes_key = KEYS[6] -- hash  ns\0cid\0task_id\0idx -> write record
local ns = ARGV[1] -- checkpoint namespace ("" = root graph)
local checkpoint_id = ARGV[2] -- "" = store nothing, only trim
local record = ARGV[3] -- msgpack [checkpoint type, bytes, metadata type, bytes, parent id]
local refs = ARGV[4] -- msgpack array of blob fields of every channel version it names
local keep_last = tonumber(ARGV[5]) -- checkpoints kept per namespace; 0 = keep all
local blob_count = tonumber(ARGV[6]) -- ARGV[7..] = blob_count (field, value) pairs
-- Optional fence: KEYS[7] = the job's record, ARGV[7 + 2 * blob_count] = the writer's epoch.
-- Nothing is written unless the job is IN_PROGRESS at that epoch (a stale or canceled run).
if KEYS[7] then
  local fence = redis.call('HMGET', KEYS[7], 'epoch', 'status')
  if fence[1] ~= ARGV[7 + 2 * blob_count] or fence[2] ~= 'IN_PROGRESS' then
    return redis.error_reply('FENCED job is ' .. tostring(fence[2]) .. ' at epoch ' .. tostring(fence[1]))
  end
end

local CHUNK = 1000 -- arguments per variadic call, well under Lua's unpack limit

local function each_chunk(command, key, items, step)
  for first = 1, #items, step do
    redis.call(command, key, unpack(items, first, math.min(first + step - 1, #items)))
  end
end

if checkpoint_id ~= '' then
  local member = ns .. '\0' .. checkpoint_id
  if blob_count > 0 then
    -- Only the channels updated since the parent (new_versions) are written.
    local pairs_ = {}
    for i = 7, 6 + 2 * blob_count do
      pairs_[#pairs_ + 1] = ARGV[i]
    end
    each_chunk('HSET', blobs_key, pairs_, CHUNK)
  end
  redis.call('HSET', data_key, member, record)
  redis.call('HSET', refs_key, member, refs)
  redis.call('ZADD', index_key, 0, member)
end

if keep_last <= 0 then
  return 0
end
local low, high = '(' .. ns .. '\0', '(' .. ns .. '\1'
local count = redis.call('ZLEXCOUNT', index_key, low, high)
if count <= keep_last then
  return 0
end

local members = redis.call('ZRANGEBYLEX', index_key, low, high) -- oldest first
local dropped = count - keep_last
-- The blob fields every checkpoint references, in one HMGET (members are few: keep_last + 1
-- on a put, more only after keep_last was lowered).
local packs = {}
for first = 1, count, CHUNK do
  local part = redis.call('HMGET', refs_key, unpack(members, first, math.min(first + CHUNK - 1, count)))
  for _, packed in ipairs(part) do packs[#packs + 1] = packed end
end
local still_used = {}
for i = dropped + 1, count do
  if packs[i] then
    for _, field in ipairs(cmsgpack.unpack(packs[i])) do
      still_used[field] = true
    end
  end
end

local unused_blobs = {}
for i = 1, dropped do
  if packs[i] then
    for _, field in ipairs(cmsgpack.unpack(packs[i])) do
      if not still_used[field] then
        still_used[field] = true -- queue each field once
        unused_blobs[#unused_blobs + 1] = field
      end
    end
  end
end
local old = {unpack(members, 1, dropped)}
each_chunk('HDEL', blobs_key, unused_blobs, CHUNK)
each_chunk('HDEL', data_key, old, CHUNK)
each_chunk('HDEL', refs_key, old, CHUNK)
each_chunk('ZREM', index_key, old, CHUNK)

-- Pending writes of every checkpoint older than the oldest one kept (including writes that
-- arrived for a checkpoint already trimmed).
local writes_low = '[' .. ns .. '\0'
local writes_high = '(' .. members[dropped + 1]
local old_writes = redis.call('ZRANGEBYLEX', writes_index_key, writes_low, writes_high)
each_chunk('HDEL', writes_key, old_writes, CHUNK)
redis.call('ZREMRANGEBYLEX', writes_index_key, writes_low, writes_high)
return dropped
