"""The Lua scripts of the Redis claim backend (each change one atomic script) and the SHA1s EVALSHA names them by."""

from __future__ import annotations

# Keys, under `<namespace>:`: claim:<id> the record (JSON, kept after its lease runs out, until the claim ends),
# lease:<id> the holder's token with the lease as its TTL (it exists exactly while the lease is live),
# seq:<id> a counter bumped by every claim and every end of a claim (the fence a claimer compares),
# claimed a sorted set of the ids with a record by claim time, expiry the same ids by lease expiry (both in the
# server's milliseconds: what lets a look at the queue fetch only the recent and the lapsed claims),
# events the stream of transitions.
_NOW = """
    if redis.replicate_commands then redis.replicate_commands() end
    local clock = redis.call('TIME')
    local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""
SCRIPTS = {
    "read": """
        return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]), redis.call('PTTL', KEYS[2]),
                redis.call('GET', KEYS[3]) or '0'}
    """,
    # ARGV: task id, the seq the claimer read, the new record, lease ms, token
    "acquire": _NOW
    + """
        local seq = tonumber(redis.call('GET', KEYS[3]) or '0')
        if seq ~= tonumber(ARGV[2]) or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
        redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[4])
        redis.call('SET', KEYS[1], ARGV[3])
        redis.call('SET', KEYS[3], seq + 1)
        redis.call('ZADD', KEYS[4], now, ARGV[1])
        redis.call('ZADD', KEYS[5], now + tonumber(ARGV[4]), ARGV[1])
        return 1
    """,
    # ARGV: the record as read, the renewed record, token, lease ms, task id
    "renew": _NOW
    + """
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
        redis.call('SET', KEYS[1], ARGV[2])
        redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
        redis.call('ZADD', KEYS[5], now + tonumber(ARGV[4]), ARGV[5])
        return 1
    """,
    # ARGV: token ('' for whoever holds it), task id
    "drop": """
        local raw = redis.call('GET', KEYS[1])
        if not raw then return ARGV[1] == '' and 1 or 0 end
        if ARGV[1] ~= '' and cjson.decode(raw).token ~= ARGV[1] then return 0 end
        redis.call('DEL', KEYS[1], KEYS[2])
        redis.call('INCR', KEYS[3])
        redis.call('ZREM', KEYS[4], ARGV[2])
        redis.call('ZREM', KEYS[5], ARGV[2])
        return 1
    """,
    # ARGV: the key prefix
    "records": """
        local out = {}
        for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
            local raw = redis.call('GET', ARGV[1] .. 'claim:' .. id)
            if raw then
                local lease = redis.call('GET', ARGV[1] .. 'lease:' .. id)
                table.insert(out, id)
                table.insert(out, raw)
                table.insert(out, lease or '')
                table.insert(out, redis.call('PTTL', ARGV[1] .. 'lease:' .. id))
            end
        end
        return out
    """,
    # ARGV: how far back "recent" goes, in ms. The ids claimed that recently and those whose lease has lapsed, as
    # two newline-joined strings: a look at the queue costs what changed lately, not what is claimed in all.
    "names": _NOW
    + """
        local recent = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
        local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
        return {table.concat(recent, '\\n'), table.concat(lapsed, '\\n')}
    """,
    # ARGV: max length, the event as JSON
    "event": "return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[2])",
    "events_end": """
        local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
        if #last == 0 then return '0-0' end
        return last[1][1]
    """,
    # ARGV: exclusive start id, count
    "events": """
        local out = {}
        for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])) do
            table.insert(out, entry[1])
            table.insert(out, entry[2][2])
        end
        return out
    """,
    "ping": "return redis.call('PING')",
}
_SHAS: dict[str, str] = {}


def script_sha(name: str) -> str:
    """The SHA1 EVALSHA names script `name` by, computed on first use (hashlib costs a hook 3 ms to import)."""
    if name not in _SHAS:
        try:
            from _sha1 import sha1
        except ImportError:  # a Python built without it
            from hashlib import sha1
        _SHAS[name] = sha1(SCRIPTS[name].encode()).hexdigest()
    return _SHAS[name]
