//! The three Lua scripts: GCRA on Redis' own clock (admit now, or reserve the next cell for
//! wait mode), and giving an unused admission back.
//!
//! All run atomically (Redis runs one script at a time), read the time with `TIME` (seconds and
//! microseconds of the Redis server, so every process of a fleet is judged by one clock), and
//! keep the state of a limit in one string key: its *theoretical arrival time* (TAT) in integer
//! microseconds since the Unix epoch. Lua numbers are doubles; every value here is an integer
//! below 2^53 (a TAT of today is about 2^50.6 µs, and a quota's `burst × interval` is held under
//! 2^52 µs by the builder), so the arithmetic is exact.

/// GCRA: admit between `least` and `want` cells at once, as many as conform now.
///
/// `KEYS[1]`: the limit's key. `ARGV`: `T` (µs per cell), `τ = (B − 1)·T` (µs), `want`, `least`.
///
/// Returns `{granted, retry_after_us, tat_after_us}`:
/// - `granted ≥ least`: that many cells were taken; the TAT is now `tat_after_us`, and the key
///   expires (`PX`) when the TAT passes — at that moment its state equals a missing key's, so
///   the expiry changes no decision and an idle limit costs Redis no memory.
/// - `granted = 0`: nothing was written; `least` cells conform in `retry_after_us` µs (by the
///   Redis clock) if nothing else is admitted first.
///
/// A cell conforms when `max(TAT, now) + n·T ≤ now + τ + T`; the number that conform now is
/// `⌊(now + τ + T − max(TAT, now)) / T⌋`, computed with a correction step so that the float
/// division can never round it up.
pub(crate) const ACQUIRE: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local least = tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local room = now + tau + t - tat
local k = math.floor(room / t)
if k * t > room then k = k - 1 end
if k > want then k = want end
if k < least then
  return {0, tat + least * t - tau - t - now, tat}
end
local new = tat + k * t
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000))
return {k, 0, new}
"#;

/// GCRA reservation, for wait mode: take one cell now if it conforms within `max_delay`, and
/// say how long until it does.
///
/// `KEYS[1]`: the limit's key. `ARGV`: `T` (µs per cell), `τ = (B − 1)·T` (µs), `max_delay`
/// (µs; negative: no bound).
///
/// Returns `{reserved, delay_us, tat_us}`:
/// - `reserved = 1`: the cell is taken, and conforms in `delay_us` µs (0: now): the caller
///   waits that long and goes; the TAT is now `tat_us` (the key expires when it passes). A
///   caller that gives up before using it refunds it with [`REFUND`] against `tat_us`.
/// - `reserved = 0`: the cell would conform in `delay_us` µs, past `max_delay`; nothing was
///   written.
///
/// A cell conforms at time `x` when `max(TAT, x) ≤ x + τ`: the delay is `max(0, TAT − τ − now)`,
/// and the TAT becomes `max(TAT, now) + T` (at `now + delay` the TAT is still `max(TAT, now)`).
/// So reservations are served in the order Redis received them, across processes too, one
/// round trip each.
pub(crate) const RESERVE: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local max_delay = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local delay = tat - tau - now
if delay < 0 then delay = 0 end
if max_delay >= 0 and delay > max_delay then
  return {0, delay, tat}
end
local new = tat + t
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000))
return {1, delay, new}
"#;

/// Gives back `cells` cells of an admission that wrote TAT `tat_after` and was never used.
///
/// `KEYS[1]`: the limit's key. `ARGV`: `tat_after` (µs), `cost = cells·T` (µs).
///
/// The same rule as palisade-ratelimit's in-process refund: when nothing was admitted since
/// (the TAT is still `tat_after`), the whole cost goes back; otherwise only the part of the
/// admission still ahead of now (`tat_after − now`), so a refund never credits more than was
/// taken — every later admission stacked its cost on top of this one's TAT. A missing key is
/// already as good as new: nothing to do. Returns the microseconds given back.
pub(crate) const REFUND: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local tat_after = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local cur = tonumber(redis.call('GET', KEYS[1]))
if cur == nil then return 0 end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local back = cost
if cur ~= tat_after then
  back = math.min(cost, tat_after - now)
end
if back <= 0 then return 0 end
local new = cur - back
if new <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000))
end
return back
"#;
