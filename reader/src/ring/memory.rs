//! The one module that touches ring memory through raw pointers: shared
//! atomics, bounded copies, and futex waits on words another process
//! writes. Everything else goes through [`Region`]'s safe methods, which
//! check every offset, so a corrupted ring can give wrong numbers but never
//! an access outside the mapping.

use memmap2::MmapRaw;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Memory that holds a ring: a shared file mapping, or heap memory for
/// tests of the format.
pub struct Region {
    ptr: *mut u8,
    len: usize,
    /// Its entry in the SIGBUS guard, if it is a guarded mapping.
    guarded: Option<usize>,
    _owner: Owner,
}

/// What keeps the memory alive; never read, only dropped.
#[allow(dead_code)]
enum Owner {
    Map(MmapRaw),
    Heap(Vec<u64>),
}

// SAFETY: the region is only accessed through atomics and bounded copies;
// the pointer stays valid for the life of `_owner`, which moves with it.
unsafe impl Send for Region {}
// SAFETY: as above; concurrent access is what the atomics are for.
unsafe impl Sync for Region {}

impl Region {
    /// Zeroed heap memory, 8-byte aligned (tests and tools).
    pub fn heap(len: usize) -> Region {
        let mut words = vec![0u64; len.div_ceil(8)];
        let ptr = words.as_mut_ptr().cast::<u8>();
        Region { ptr, len, guarded: None, _owner: Owner::Heap(words) }
    }

    /// A shared mapping of a whole file (guarded against truncation when
    /// this process asked for it: see [`guard_against_truncation`]).
    pub fn map(map: MmapRaw) -> Region {
        let (ptr, len) = (map.as_mut_ptr(), map.len());
        Region { ptr, len, guarded: guard::add(ptr as usize, len), _owner: Owner::Map(map) }
    }

    /// Whether the file under this mapping was cut short while mapped: its
    /// pages now read as zeros, and nothing written reaches the file.
    pub fn damaged(&self) -> bool {
        self.guarded.is_some_and(guard::hit)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: usize, len: usize, align: usize) {
        let end = offset.checked_add(len).expect("offset overflow");
        assert!(end <= self.len, "ring access {offset}..{end} beyond {} bytes", self.len);
        assert!(offset.is_multiple_of(align), "unaligned ring access at {offset}");
    }

    /// The 64-bit word at `offset` (8-aligned, inside the region).
    pub fn u64_at(&self, offset: usize) -> &AtomicU64 {
        self.check(offset, 8, 8);
        // SAFETY: in bounds and aligned (checked); the mapping outlives the
        // borrow; AtomicU64 has the layout of u64 and every access to the
        // word, from any process, is atomic.
        unsafe { &*self.ptr.add(offset).cast::<AtomicU64>() }
    }

    /// The 32-bit word at `offset` (4-aligned, inside the region).
    pub fn u32_at(&self, offset: usize) -> &AtomicU32 {
        self.check(offset, 4, 4);
        // SAFETY: as for `u64_at`.
        unsafe { &*self.ptr.add(offset).cast::<AtomicU32>() }
    }

    /// Copies `len` bytes at `offset` out of the region.
    pub fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        self.check(offset, len, 1);
        let mut out = vec![0u8; len];
        // SAFETY: in bounds (checked); the bytes were published with a
        // release store the caller acquired, and the writer does not touch
        // them until they are acknowledged.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(offset), out.as_mut_ptr(), len) };
        out
    }

    /// Copies `bytes` into the region at `offset`.
    pub fn write(&self, offset: usize, bytes: &[u8]) {
        self.check(offset, bytes.len(), 1);
        // SAFETY: in bounds (checked); only the producer writes the data
        // area, and only where no consumer reads (unpublished space).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(offset), bytes.len()) };
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Some(entry) = self.guarded {
            guard::remove(entry);
        }
    }
}

/// Makes this process survive ring files truncated under its mappings: a
/// SIGBUS on a guarded mapping replaces it by zeroed private memory and
/// marks it [damaged](Region::damaged), instead of killing the process
/// (for the pgcdc worker, a crash-restart of the whole server). A SIGBUS
/// anywhere else keeps its default action. Mappings made after the call
/// are guarded.
pub fn guard_against_truncation() {
    guard::install();
}

/// The guarded mappings, in fixed slots a signal handler can read.
mod guard {
    use super::*;

    const SLOTS: usize = 1024;
    static ON: AtomicBool = AtomicBool::new(false);
    static STARTS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
    static LENS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
    static HIT: [AtomicBool; SLOTS] = [const { AtomicBool::new(false) }; SLOTS];

    pub fn install() {
        if ON.swap(true, Ordering::AcqRel) {
            return;
        }
        // SAFETY: a zeroed sigaction is valid; the handler has the
        // SA_SIGINFO signature and only touches atomics and calls mmap.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
    }

    pub fn add(start: usize, len: usize) -> Option<usize> {
        if !ON.load(Ordering::Acquire) || len == 0 {
            return None;
        }
        let slot =
            (0..SLOTS).find(|i| STARTS[*i].compare_exchange(0, start, Ordering::AcqRel, Ordering::Relaxed).is_ok())?;
        HIT[slot].store(false, Ordering::Release);
        LENS[slot].store(len, Ordering::Release);
        Some(slot)
    }

    pub fn remove(slot: usize) {
        LENS[slot].store(0, Ordering::Release);
        HIT[slot].store(false, Ordering::Release);
        STARTS[slot].store(0, Ordering::Release);
    }

    pub fn hit(slot: usize) -> bool {
        HIT[slot].load(Ordering::Acquire)
    }

    extern "C" fn on_sigbus(_signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
        // SAFETY: the kernel passes the fault's siginfo.
        let address = unsafe { (*info).si_addr() } as usize;
        for slot in 0..SLOTS {
            let (start, len) = (STARTS[slot].load(Ordering::Acquire), LENS[slot].load(Ordering::Acquire));
            if start != 0 && address >= start && address < start + len {
                // SAFETY: replaces exactly the pages of a mapping this
                // process made (and keeps until the Region drops), so that
                // the faulting access and every later one find memory.
                unsafe {
                    libc::mmap(
                        start as *mut libc::c_void,
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                        -1,
                        0,
                    );
                }
                HIT[slot].store(true, Ordering::Release);
                return;
            }
        }
        // Not a ring: what a SIGBUS does without the guard.
        // SAFETY: resetting a signal's disposition; the fault repeats and
        // takes its default action.
        unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
    }
}

/// Sleeps until the word changes from `expected`, a wake-up arrives, or
/// `timeout` passes. Spurious returns are fine: callers re-check.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT reads the word atomically and sleeps; the word is
    // a live AtomicU32 (in shared memory: not FUTEX_PRIVATE_FLAG), and the
    // timespec outlives the call.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, &ts as *const libc::timespec);
    }
}

/// Wakes every process sleeping on `word`.
pub fn wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the word's address.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

/// Whether a process exists (signal 0 probes without sending).
pub fn process_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    // SAFETY: kill with signal 0 performs only the permission and existence
    // checks.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
