//! Batch reads, updates and deletes of hash maps (BPF_MAP_*_BATCH, Linux 5.6+): a slice of
//! a 1M-entry table in a few syscalls instead of ~3 per entry. aya 0.14 has no batch
//! operations.

use std::{
    io,
    marker::PhantomData,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, Result, ensure};
use aya::{Pod, maps::MapData};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Where a walk of a hash map stands. The kernel's token is a bucket index (u32), so a
/// walk resumed after entries were added or removed neither restarts nor fails; it may
/// miss entries inserted behind it, which the next walk sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Cursor {
    #[default]
    Start,
    At(u32),
    End,
}

/// A hash map whose key and value sizes were checked against `K` and `V`.
pub struct BatchMap<K, V> {
    data: MapData,
    /// Least room one lookup is given; grown when a bucket does not fit (ENOSPC).
    min_room: usize,
    _types: PhantomData<(K, V)>,
}

fn call(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: attr is a valid `bpf_attr` batch member whose pointers the callers set to
    // live buffers of `count` keys and values of the map's sizes (checked in `new`).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Write every `keys[i] = values[i]` into the map behind `data`, 64k entries a syscall.
/// The caller vouches that `K` and `V` are the map's key and value types.
pub(super) fn update<K, V>(data: &MapData, keys: &[K], values: &[V]) -> Result<()> {
    ensure!(
        keys.len() == values.len(),
        "keys and values differ in length"
    );
    for (k, v) in keys.chunks(65536).zip(values.chunks(65536)) {
        let mut attr = BatchAttr {
            map_fd: data.fd().as_fd().as_raw_fd() as u32,
            keys: k.as_ptr() as u64,
            values: v.as_ptr() as u64,
            count: k.len() as u32,
            ..BatchAttr::default()
        };
        call(BPF_MAP_UPDATE_BATCH, &mut attr).context("BPF_MAP_UPDATE_BATCH")?;
        ensure!(
            attr.count as usize == k.len(),
            "BPF_MAP_UPDATE_BATCH wrote {} of {} entries",
            attr.count,
            k.len()
        );
    }
    Ok(())
}

impl<K: Pod + Default, V: Pod + Default> BatchMap<K, V> {
    pub fn new(data: MapData) -> Result<Self> {
        let info = data.info().context("reading the map's info")?;
        ensure!(
            info.key_size() as usize == size_of::<K>()
                && info.value_size() as usize == size_of::<V>(),
            "map key/value sizes {}/{} differ from {}/{}",
            info.key_size(),
            info.value_size(),
            size_of::<K>(),
            size_of::<V>()
        );
        Ok(BatchMap {
            data,
            min_room: 1,
            _types: PhantomData,
        })
    }

    fn attr(&self) -> BatchAttr {
        BatchAttr {
            map_fd: self.data.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        }
    }

    /// Append up to about `max` entries from `cursor` on to `keys` and `values`, advancing
    /// the cursor (to `End` when the walk is over). Whole buckets only, so it may return a
    /// bucket's worth more or fewer than `max`. Returns how many were appended.
    pub fn lookup(
        &mut self,
        cursor: &mut Cursor,
        max: usize,
        keys: &mut Vec<K>,
        values: &mut Vec<V>,
    ) -> Result<usize> {
        let start = keys.len();
        while keys.len() - start < max && *cursor != Cursor::End {
            // At most 64k a call (the buffers' size); at least a bucket's worth.
            let room = (max - (keys.len() - start)).min(1 << 16).max(self.min_room);
            let at = keys.len();
            keys.resize(at + room, K::default());
            values.resize(at + room, V::default());
            let mut token_in = match *cursor {
                Cursor::At(t) => t,
                _ => 0,
            };
            let mut token_out = 0u32;
            let mut attr = self.attr();
            attr.in_batch = match *cursor {
                Cursor::At(_) => &mut token_in as *mut u32 as u64,
                _ => 0,
            };
            attr.out_batch = &mut token_out as *mut u32 as u64;
            attr.keys = keys[at..].as_mut_ptr() as u64;
            attr.values = values[at..].as_mut_ptr() as u64;
            attr.count = room as u32;
            let result = call(BPF_MAP_LOOKUP_BATCH, &mut attr);
            let got = (attr.count as usize).min(room);
            keys.truncate(at + got);
            values.truncate(at + got);
            match result {
                Ok(()) => *cursor = Cursor::At(token_out),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => *cursor = Cursor::End,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                    // One bucket holds more than `room` entries.
                    self.min_room = room * 2;
                }
                Err(e) => return Err(e).context("BPF_MAP_LOOKUP_BATCH"),
            }
        }
        Ok(keys.len() - start)
    }

    /// Write every `keys[i] = values[i]`.
    pub fn update(&self, keys: &[K], values: &[V]) -> Result<()> {
        update(&self.data, keys, values)
    }

    /// Delete `keys`; returns which of them were present (and so removed by this call).
    pub fn delete(&self, keys: &[K]) -> Result<Vec<bool>> {
        let mut removed = vec![false; keys.len()];
        let mut at = 0;
        while at < keys.len() {
            let mut attr = self.attr();
            attr.keys = keys[at..].as_ptr() as u64;
            attr.count = (keys.len() - at) as u32;
            let result = call(BPF_MAP_DELETE_BATCH, &mut attr);
            let done = attr.count as usize;
            removed[at..at + done].fill(true);
            at += done;
            match result {
                Ok(()) => break,
                // The kernel stops at the first key that is gone (removed by the data plane
                // meanwhile): skip it and go on.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => at += 1,
                Err(e) => return Err(e).context("BPF_MAP_DELETE_BATCH"),
            }
        }
        Ok(removed)
    }

    /// The map's own entry for one key (a point lookup).
    pub fn get(&self, key: &K) -> Option<V> {
        let mut value = V::default();
        #[repr(C)]
        struct ElemAttr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
        let mut attr = ElemAttr {
            map_fd: self.data.fd().as_fd().as_raw_fd() as u32,
            _pad: 0,
            key: key as *const K as u64,
            value: &mut value as *mut V as u64,
            flags: 0,
        };
        // SAFETY: key and value point at a live K and V of the map's sizes.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_ELEM,
                &mut attr as *mut ElemAttr,
                std::mem::size_of::<ElemAttr>() as u32,
            )
        };
        (rc == 0).then_some(value)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{FromRawFd as _, OwnedFd};

    use super::*;

    /// A plain BPF hash map of u64 -> [u64; 2], made with the syscall.
    fn hash_map(entries: u32) -> MapData {
        #[repr(C)]
        #[derive(Default)]
        struct CreateAttr {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
            map_flags: u32,
            _rest: [u32; 24],
        }
        const BPF_MAP_CREATE: libc::c_long = 0;
        const BPF_MAP_TYPE_HASH: u32 = 1;
        let mut attr = CreateAttr {
            map_type: BPF_MAP_TYPE_HASH,
            key_size: 8,
            value_size: 16,
            max_entries: entries,
            ..CreateAttr::default()
        };
        // SAFETY: a zeroed bpf_attr with the map_create fields set.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_CREATE,
                &mut attr as *mut CreateAttr,
                std::mem::size_of::<CreateAttr>() as u32,
            )
        };
        assert!(fd >= 0, "BPF_MAP_CREATE: {}", io::Error::last_os_error());
        // SAFETY: the syscall just returned this fd, owned by nobody else.
        MapData::from_fd(unsafe { OwnedFd::from_raw_fd(fd as i32) }).unwrap()
    }

    #[test]
    fn walks_updates_and_deletes_in_batches() {
        const N: u64 = 10_000;
        let mut map = BatchMap::<u64, [u64; 2]>::new(hash_map(N as u32)).unwrap();
        let keys: Vec<u64> = (0..N).collect();
        let values: Vec<[u64; 2]> = keys.iter().map(|k| [k * 3, !k]).collect();
        map.update(&keys, &values).unwrap();

        // Small slices, resumed from the cursor, see every entry exactly once.
        let (mut seen_k, mut seen_v) = (Vec::new(), Vec::new());
        let mut cursor = Cursor::Start;
        let mut calls = 0;
        while cursor != Cursor::End {
            map.lookup(&mut cursor, 1000, &mut seen_k, &mut seen_v)
                .unwrap();
            calls += 1;
        }
        assert!(calls >= 10, "{calls} slices");
        let mut pairs: Vec<_> = seen_k.iter().copied().zip(seen_v).collect();
        pairs.sort();
        assert_eq!(pairs.len(), N as usize);
        for (k, v) in pairs {
            assert_eq!(v, [k * 3, !k]);
        }

        // Delete the even half, with some keys already gone.
        let even: Vec<u64> = (0..N).step_by(2).chain([N + 1, N + 7]).collect();
        let removed = map.delete(&even).unwrap();
        assert_eq!(removed.iter().filter(|r| **r).count(), N as usize / 2);
        assert!(!removed[removed.len() - 1] && !removed[removed.len() - 2]);
        let (mut left, mut ignored) = (Vec::new(), Vec::new());
        let mut cursor = Cursor::Start;
        map.lookup(&mut cursor, usize::MAX, &mut left, &mut ignored)
            .unwrap();
        assert_eq!(cursor, Cursor::End);
        left.sort();
        assert_eq!(left, (1..N).step_by(2).collect::<Vec<_>>());
        assert_eq!(map.get(&1), Some([3, !1]));
        assert_eq!(map.get(&2), None);

        // A one-entry slice still makes progress, bucket by bucket (ENOSPC grows).
        let (mut k, mut v) = (Vec::new(), Vec::new());
        let mut cursor = Cursor::Start;
        while cursor != Cursor::End {
            map.lookup(&mut cursor, 1, &mut k, &mut v).unwrap();
        }
        assert_eq!(k.len(), N as usize / 2);
    }
}
