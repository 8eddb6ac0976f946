-- Read checkpoints of one namespace of a thread with their blobs and pending writes, in one
-- round trip (RedisSaver.get_tuple and, batch by batch, RedisSaver.list).
-- Returns an array of {member, record, refs, blob values (aligned with refs), write members,
-- write records (aligned with write members)}, newest checkpoint first.
local index_key = KEYS[1] -- zset  ns\0cid (score 0; lex order = checkpoint id order)
local data_key = KEYS[2] -- hash  ns\0cid -> checkpoint record
local refs_key = KEYS[3] -- hash  ns\0cid -> msgpack array of the blob fields it references
local blobs_key = KEYS[4] -- hash  ns\0version\0channel -> typed channel value
local writes_index_key = KEYS[5] -- zset  ns\0cid\0task_id\0idx (score 0)
local writes_key = KEYS[6] -- hash  ns\0cid\0task_id\0idx -> write record
local ns = ARGV[1] -- checkpoint namespace ("" = root graph)
local checkpoint_id = ARGV[2] -- this checkpoint only; "" = the newest ones
local before = ARGV[3] -- with checkpoint_id "": only ids lower than this ("" = no bound)
local limit = tonumber(ARGV[4]) -- with checkpoint_id "": at most this many

local function hmget_all(key, fields)
  local values = {}
  for first = 1, #fields, 1000 do
    local chunk = redis.call('HMGET', key, unpack(fields, first, math.min(first + 999, #fields)))
    for _, value in ipairs(chunk) do
      values[#values + 1] = value
    end
  end
  return values
end

local members
if checkpoint_id ~= '' then
  members = {ns .. '\0' .. checkpoint_id}
else
  local high = '(' .. ns .. '\1'
  if before ~= '' then
    high = '(' .. ns .. '\0' .. before
  end
  members = redis.call('ZREVRANGEBYLEX', index_key, high, '(' .. ns .. '\0', 'LIMIT', 0, limit)
end

local result = {}
for _, member in ipairs(members) do
  local record = redis.call('HGET', data_key, member)
  if record then
    local refs = redis.call('HGET', refs_key, member) or ''
    local blobs = {}
    if refs ~= '' then
      blobs = hmget_all(blobs_key, cmsgpack.unpack(refs))
    end
    local write_members = redis.call(
      'ZRANGEBYLEX', writes_index_key, '[' .. member .. '\0', '(' .. member .. '\1')
    local writes = hmget_all(writes_key, write_members)
    result[#result + 1] = {member, record, refs, blobs, write_members, writes}
  end
end
return result
