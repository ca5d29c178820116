//! Conversions at the edge to the kernel's C interfaces: structure sizes as `socklen_t`, and
//! batch counts as the `u32` that rings and `*mmsg` calls take. Each is exact for what vxdp
//! passes (a socket address is a few dozen bytes, a batch a small array), so the narrowing
//! is checked once here instead of cast at every call.

/// `size_of::<T>()` as the `socklen_t` the socket calls take.
#[inline]
pub(crate) fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>())
        .expect("socket structures are a few dozen bytes")
}

/// A batch count as the `u32` rings and `sendmmsg`/`recvmmsg` take (saturating: batches are
/// small arrays, far below it).
#[inline]
pub(crate) fn batch_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_batches_convert_exactly() {
        assert_eq!(socklen_of::<libc::sockaddr_in>(), 16);
        assert_eq!(batch_u32(64), 64);
        assert_eq!(batch_u32(usize::MAX), u32::MAX);
    }
}
