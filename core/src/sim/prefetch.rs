//! A hint to the processor: the memory of the next events' instances will
//! be read soon.
//!
//! At a hundred thousand instances the fleet is far larger than the
//! processor's caches, and each event waited for each cache line of its
//! instance as the machine's code first read it: one wait after another.
//! The queue knows the next events before this one is handled, so the
//! fleet asks for their instances' lines first, and they arrive while this
//! event is handled (the 100,000-instance run: about a third less
//! time, with identical reports).
//!
//! This is the one `unsafe` block of the workspace, and only with the `sim`
//! feature: the library itself keeps `forbid(unsafe_code)`. The standard
//! library's safe `std::hint::prefetch_read` is not stable yet; once it is,
//! it replaces this and the exception goes.

/// Asks the processor to bring every cache line of `value` into its
/// caches. It changes nothing that the program computes, only when memory
/// arrives; on processors other than x86-64 it does nothing.
#[inline(always)]
pub(crate) fn prefetch<T>(value: &T) {
    let start: *const i8 = (value as *const T).cast();
    // From the line of the first byte to that of the last.
    let skew = start as usize % LINE;
    let mut offset = 0;
    while offset < skew + std::mem::size_of::<T>() {
        line(start.wrapping_add(offset).wrapping_sub(skew));
        offset += LINE;
    }
}

/// The size of a cache line on the processors this is for.
const LINE: usize = 64;

#[inline(always)]
#[allow(unsafe_code)]
fn line(at: *const i8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch instruction reads no memory into the program and
    // cannot fault, whatever the address; `at` is within a live reference
    // besides. SSE, which it needs, is part of every x86-64 processor.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}
