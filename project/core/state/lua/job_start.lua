-- Move a job ASSIGNED -> IN_PROGRESS for the worker and epoch of the request, and
-- count the run (the record's ``runs``, the handler executions). A redelivery of the request
-- that started the job (its worker process died mid-way) runs it again without moving it.
-- Returns 'run' (first start), 'rerun' (redelivery), 'exhausted' (run max_runs
-- times already: a poison job; only the run counter moved), 'canceled' (the job was
-- canceled: drop the order), 'final' (the job is COMPLETED, FAILED or ABANDONED: this
-- request is a copy of a finished one), 'stale' (another epoch or worker, or the job moved
-- on) or 'missing' (no such job).

local job_key = KEYS[1]     -- job:{id}
local stats_key = KEYS[2]   -- stats:jobs
local log_key = KEYS[3]     -- joblog:{id}

local job_id = ARGV[1]
local epoch = tonumber(ARGV[2])
local worker_id = ARGV[3]
local now_ms = ARGV[4]
local request_id = ARGV[5]
local channel = ARGV[6]
local chain_link = ARGV[7]
local max_runs = tonumber(ARGV[8])
local kind = ARGV[9]        -- handler | agent
local log_cap = ARGV[10]

local r = redis.call('HMGET', job_key, 'status', 'epoch', 'assignee', 'exec_msg', 'runs')
local status, assignee, exec_msg = r[1], r[3], r[4]
if not status then return 'missing' end
if status == 'CANCELED' then return 'canceled' end
if status == 'COMPLETED' or status == 'FAILED' or status == 'ABANDONED' then return 'final' end
if tonumber(r[2]) ~= epoch or assignee ~= worker_id then return 'stale' end
local rerun = status == 'IN_PROGRESS' and exec_msg == request_id
if status ~= 'ASSIGNED' and not rerun then return 'stale' end
local runs = redis.call('HINCRBY', job_key, 'runs', 1)
if runs > max_runs then return 'exhausted' end
redis.call('HINCRBY', stats_key, 'handler_executions', 1)
if rerun then
  redis.call('HINCRBY', stats_key, 'redeliveries', 1)
  return 'rerun'
end
redis.call('HSET', job_key, 'status', 'IN_PROGRESS', 'updated_ms', now_ms, 'exec_msg', request_id,
  'kind', kind, string.format('link:%06d:b', epoch), chain_link)
redis.call('PUBLISH', channel, cjson.encode({job_id=job_id, status='IN_PROGRESS',
  epoch=epoch, assignee=worker_id}))
redis.call('XADD', log_key, 'MAXLEN', '~', log_cap, '*', 'k', 'status', 'ms', now_ms,
  'd', cjson.encode({status='IN_PROGRESS', epoch=epoch, worker=worker_id}))
return 'run'
