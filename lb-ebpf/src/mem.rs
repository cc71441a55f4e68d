//! Copies and zeroing as plain loads and stores. The BPF backend, as bpf-linker drives it,
//! expands `memcpy` inline but leaves `memset` and `memmove` as calls to byte-at-a-time
//! loops: a struct assignment through a map pointer (which Rust lowers to `memmove`) cost
//! the established path a 56-iteration loop, and zeroing the flow key a 40-iteration one.

/// Copy `src` into `dst`: two references never overlap, so this is a `memcpy`, which the
/// backend expands into loads and stores as wide as `T`'s alignment.
#[inline(always)]
pub fn copy<T: Copy>(dst: &mut T, src: &T) {
    // SAFETY: a shared and a mutable reference cannot overlap.
    unsafe { core::ptr::copy_nonoverlapping(src, dst, 1) }
}

/// Zero `value` with 8-byte stores (`T` 8-aligned, its size a multiple of 8).
#[inline(always)]
pub fn zero<T: Copy>(value: &mut T) {
    const {
        assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() >= 8);
    }
    let words = (value as *mut T).cast::<u64>();
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: inside `value` and aligned; volatile, so LLVM cannot fold the stores back
        // into a `memset` call.
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
}
