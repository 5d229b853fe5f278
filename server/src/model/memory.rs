//! Memory figures of this process and its devices: free memory for the device plan (CUDA's `mem_get_info`,
//! `/proc/meminfo`'s MemAvailable for the CPU) and the anonymous resident set, sampled while a model loads.
//!
//! The anonymous set (`RssAnon`) is what loading keeps: a memory-mapped checkpoint's pages count as `RssFile`
//! (page cache the kernel can drop), so `VmHWM` would charge the whole file to a load that copies one tensor at
//! a time out of it. Linux keeps no high-water mark of `RssAnon`, hence the sampler.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use candle_core::Device;

/// One `kB` field of `/proc/self/status` or `/proc/meminfo`, in bytes.
fn kb_field(file: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(file).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

/// MemAvailable: what the CPU can still give without swapping (free memory plus droppable page cache).
pub fn mem_available_bytes() -> Option<u64> {
    kb_field("/proc/meminfo", "MemAvailable:")
}

/// This process's anonymous resident memory (heap and anonymous maps, not mapped files).
pub fn rss_anon_bytes() -> Option<u64> {
    kb_field("/proc/self/status", "RssAnon:")
}

/// `(free, total)` bytes of a CUDA device, as the driver reports them.
#[cfg(feature = "cuda")]
fn cuda_mem_info(d: &candle_core::CudaDevice) -> Option<(u64, u64)> {
    let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
    Some((free as u64, total as u64))
}

/// Free memory of `device`: CUDA's `mem_get_info`, MemAvailable for the CPU.
pub fn free_bytes(device: &Device) -> Option<u64> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => cuda_mem_info(d).map(|(free, _total)| free),
        Device::Cpu => mem_available_bytes(),
        _ => None,
    }
}

/// Bytes in use on the device (CUDA: all of it, as the driver reports; CPU: this process's resident set).
pub fn used_bytes(device: &Device) -> Option<u64> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => cuda_mem_info(d).map(|(free, total)| total - free),
        Device::Cpu => kb_field("/proc/self/status", "VmRSS:"),
        _ => None,
    }
}

/// Peak resident memory of this process (VmHWM).
pub fn peak_rss_bytes() -> Option<u64> {
    kb_field("/proc/self/status", "VmHWM:")
}

/// Hands memory the allocator keeps after a large free back to the system.
///
/// A dropped checkpoint frees hundreds of tensors at once. glibc raises its mmap threshold to the largest
/// chunk freed, so later tensors of that size come from the heap arenas, and their freed pages stay resident:
/// a server alternating between two tiny checkpoints grew from 52 to 171 MB (plateauing there) while holding
/// one. `malloc_trim` returns every free page of every arena. Call it after big frees only; it walks the heaps.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only returns free pages of glibc's own heaps to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Samples [`rss_anon_bytes`] every few milliseconds on a thread until [`Self::finish`], keeping the maximum.
pub struct PeakSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl PeakSampler {
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_anon_bytes().unwrap_or(0)));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::Builder::new()
            .name("rss-sampler".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    if let Some(b) = rss_anon_bytes() {
                        p.fetch_max(b, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
            .ok();
        Self { stop, peak, thread }
    }

    /// Stops sampling; the highest anonymous resident set seen (including one last reading).
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(b) = rss_anon_bytes() {
            self.peak.fetch_max(b, Ordering::Relaxed);
        }
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for PeakSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 256 MiB allocation held while sampling shows in the peak, and the peak outlives its release. (The
    /// margin allows for other tests in this process freeing their memory meanwhile.)
    #[test]
    fn sampler_sees_a_held_allocation() {
        let before = rss_anon_bytes().expect("Linux /proc");
        let s = PeakSampler::start();
        let v = vec![1u8; 256 << 20];
        std::thread::sleep(Duration::from_millis(50));
        drop(std::hint::black_box(v));
        let peak = s.finish();
        assert!(peak >= before + (192 << 20), "peak {peak}, before {before}");
        assert!(mem_available_bytes().is_some_and(|b| b > 0));
    }
}
