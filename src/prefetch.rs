//! Prefetch hints: ask the processor to start bringing memory into its caches before it is
//! read, so that a loop over many independent cache misses waits for several at once rather
//! than for each in turn. A hint only: nothing waits for it, and it changes no result. On
//! x86-64 through `safe_arch`'s safe wrapper of `prefetcht0`; elsewhere nothing.

/// A cache line, the unit the processor fetches.
const LINE: usize = 64;

/// Starts fetching the cache line that holds the start of `value`.
#[inline]
pub(crate) fn line<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    safe_arch::prefetch_t0(value);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Starts fetching the first `lines` cache lines of `bytes`.
#[inline]
pub(crate) fn bytes(bytes: &[u8], lines: usize) {
    for byte in bytes.iter().step_by(LINE).take(lines) {
        line(byte);
    }
}
