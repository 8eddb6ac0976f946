-- Copy every checkpoint, blob and pending write of one thread into another (copy_thread).
-- Fields and members never contain the thread id, so this is a plain merge of six keys.
local source_index, target_index = KEYS[1], KEYS[7] -- zsets ns\0cid
local source_data, target_data = KEYS[2], KEYS[8] -- hashes ns\0cid -> record
local source_refs, target_refs = KEYS[3], KEYS[9] -- hashes ns\0cid -> blob fields
local source_blobs, target_blobs = KEYS[4], KEYS[10] -- hashes ns\0version\0channel -> value
local source_writes_index, target_writes_index = KEYS[5], KEYS[11] -- zsets of write members
local source_writes, target_writes = KEYS[6], KEYS[12] -- hashes write member -> record

local CHUNK = 1000

local function copy_hash(source, target)
  local flat = redis.call('HGETALL', source)
  for first = 1, #flat, CHUNK do
    redis.call('HSET', target, unpack(flat, first, math.min(first + CHUNK - 1, #flat)))
  end
end

local function copy_lex_zset(source, target)
  local members = redis.call('ZRANGE', source, 0, -1)
  local args = {}
  for _, member in ipairs(members) do
    args[#args + 1] = 0
    args[#args + 1] = member
  end
  for first = 1, #args, CHUNK do
    redis.call('ZADD', target, unpack(args, first, math.min(first + CHUNK - 1, #args)))
  end
end

copy_lex_zset(source_index, target_index)
copy_hash(source_data, target_data)
copy_hash(source_refs, target_refs)
copy_hash(source_blobs, target_blobs)
copy_lex_zset(source_writes_index, target_writes_index)
copy_hash(source_writes, target_writes)
return 1
