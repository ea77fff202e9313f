//! Adaptive chunked processing: row ranges whose size follows the memory pressure.
//!
//! An [`AdaptiveChunker`] hands out consecutive row ranges of a table (`0..n` rows). Every
//! [`check_every`](ChunkConfig::check_every) chunks (default 10, and before the first one)
//! it reads the [`PressureLevel`] of its [`PressureSource`] and adapts the chunk size. The
//! source is the allocator ([`LimitedAllocator`]: its own budget only), a running monitor
//! ([`MonitorHandle`] or [`MemoryMonitor`]: the combined level of the allocator, RSS, the
//! cgroup, system available memory and PSI, so memory the allocator cannot see, from a C
//! library or `mmap`, steers the chunks too), or any closure returning a level:
//!
//! | level    | chunk size                                                            |
//! |----------|-----------------------------------------------------------------------|
//! | Low      | doubled, one step per check, never above the start size               |
//! | Medium   | kept                                                                  |
//! | High     | halved, not below the floor                                           |
//! | Critical | release hooks and [`release_free_memory`] first; then, if still Critical, quartered, not below the floor |
//!
//! Before each chunk it checks that the chunk's estimated bytes
//! (`rows * bytes_per_row`) fit in the source's [`Headroom`] (for a monitor, the tightest
//! of the allocator's budget, RSS against the process limit, and the cgroup), shrinking the
//! chunk to what fits.
//! When not even the floor chunk fits (after one release round), it stops with
//! [`ChunkError::CannotAfford`], carrying the numbers, instead of going on into a refusal.
//!
//! Slice Arrow data with the ranges: `batch.slice(range.start, range.len())` for an
//! `arrow_array::RecordBatch`, or [`SliceRows`] for `arrow_buffer` buffers (feature
//! `arrow`).

use crate::monitor::{MemoryMonitor, MonitorHandle};
use crate::release::release_free_memory;
use crate::{LimitedAllocator, PressureLevel};
use core::fmt;
use core::ops::Range;
use std::time::{Duration, Instant};

/// Bytes in use and the limit they count against: what a chunk must fit in.
///
/// ```
/// let h = limited_allocator::chunking::Headroom { current: 700, limit: 1000 };
/// assert_eq!(h.available(), 300);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    /// Bytes in use.
    pub current: usize,
    /// The limit they count against.
    pub limit: usize,
}

impl Headroom {
    /// `limit - current`, saturating.
    ///
    /// ```
    /// let h = limited_allocator::chunking::Headroom { current: 1200, limit: 1000 };
    /// assert_eq!(h.available(), 0);
    /// ```
    pub fn available(&self) -> usize {
        self.limit.saturating_sub(self.current)
    }

    /// The one with less available.
    fn tighter(self, other: Option<Self>) -> Self {
        match other {
            Some(o) if o.available() < self.available() => o,
            _ => self,
        }
    }
}

/// Where an [`AdaptiveChunker`] reads memory pressure: the allocator, a monitor, or a
/// closure returning a [`PressureLevel`].
///
/// ```
/// use limited_allocator::chunking::{Headroom, PressureSource};
/// use limited_allocator::PressureLevel;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// /// Memory an external engine reports, e.g. through its own API.
/// struct Engine { used: AtomicU64, limit: u64 }
///
/// impl PressureSource for Engine {
///     fn pressure_level(&self) -> PressureLevel {
///         let pct = self.used.load(Ordering::Relaxed) * 100 / self.limit;
///         if pct >= 80 { PressureLevel::High } else { PressureLevel::Low }
///     }
///     fn headroom(&self) -> Option<Headroom> {
///         let current = self.used.load(Ordering::Relaxed) as usize;
///         Some(Headroom { current, limit: self.limit as usize })
///     }
/// }
/// let engine = Engine { used: AtomicU64::new(900), limit: 1000 };
/// assert_eq!(engine.pressure_level(), PressureLevel::High);
/// ```
pub trait PressureSource {
    /// The level now.
    fn pressure_level(&self) -> PressureLevel;

    /// What a chunk must fit in, or `None` when unknown (the affordability check is then
    /// skipped; the level still steers the chunk size). Default `None`.
    fn headroom(&self) -> Option<Headroom> {
        None
    }

    /// Called after a release round, before the level is read again, so a source that
    /// caches (a monitor between samples) can look afresh. Default: nothing.
    fn refresh(&self) {}
}

impl<A> PressureSource for LimitedAllocator<A> {
    fn pressure_level(&self) -> PressureLevel {
        LimitedAllocator::pressure_level(self)
    }
    fn headroom(&self) -> Option<Headroom> {
        Some(Headroom {
            current: self.allocated_bytes(),
            limit: self.limit(),
        })
    }
}

/// The monitor's combined level (one atomic load, as of its last sample); headroom is the
/// tightest of the allocator's budget (read live), RSS against the process limit, and the
/// cgroup's working set against its limit (as of the last sample). After a release round
/// it takes a sample at once.
impl PressureSource for MonitorHandle {
    fn pressure_level(&self) -> PressureLevel {
        self.level()
    }
    fn headroom(&self) -> Option<Headroom> {
        let pair = |c: u64, l: u64| Headroom {
            current: usize::try_from(c).unwrap_or(usize::MAX),
            limit: usize::try_from(l).unwrap_or(usize::MAX),
        };
        let allocator = self
            .source()
            .filter(|s| s.limit() != usize::MAX)
            .map(|s| Headroom {
                current: s.allocated_bytes(),
                limit: s.limit(),
            });
        let last = self.stats().last?;
        let m = &last.memory;
        let rss = m
            .rss_anon_bytes
            .or(m.rss_bytes)
            .zip(last.process_limit)
            .map(|(r, (l, _))| pair(r, l));
        let cgroup = m
            .cgroup
            .as_ref()
            .and_then(|cg| cg.working_set_bytes.zip(cg.limit_bytes))
            .map(|(w, l)| pair(w, l));
        [allocator, rss, cgroup]
            .into_iter()
            .flatten()
            .reduce(|a, b| a.tighter(Some(b)))
    }
    fn refresh(&self) {
        self.sample_now();
    }
}

/// As its [`MonitorHandle`].
impl PressureSource for MemoryMonitor {
    fn pressure_level(&self) -> PressureLevel {
        self.handle().pressure_level()
    }
    fn headroom(&self) -> Option<Headroom> {
        (**self).headroom()
    }
    fn refresh(&self) {
        (**self).refresh()
    }
}

/// Any closure returning a level (no headroom: only the level steers).
///
/// ```
/// use limited_allocator::chunking::{process_in_chunks, ChunkConfig};
/// use limited_allocator::PressureLevel;
/// let report = process_in_chunks(&|| PressureLevel::High, 1000, ChunkConfig::new(100, 8), |_| {})?;
/// assert!(report.shrinks > 0);
/// # Ok::<(), limited_allocator::chunking::ChunkError>(())
/// ```
impl<F: Fn() -> PressureLevel> PressureSource for F {
    fn pressure_level(&self) -> PressureLevel {
        self()
    }
}

/// How an [`AdaptiveChunker`] sizes its chunks.
///
/// ```
/// use limited_allocator::chunking::ChunkConfig;
/// let config = ChunkConfig::new(100_000, 64).with_min_rows(1_000).with_check_every(5);
/// assert_eq!((config.start_rows, config.min_rows, config.check_every), (100_000, 1_000, 5));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkConfig {
    /// The first and largest chunk size, in rows.
    pub start_rows: usize,
    /// The floor: chunks never get smaller than this (except the table's last rows).
    pub min_rows: usize,
    /// Pressure is read every this many chunks (and before the first).
    pub check_every: usize,
    /// Estimated bytes one row needs while it is processed; 0 turns the affordability
    /// check off (pressure still steers the size).
    pub bytes_per_row: usize,
}

impl ChunkConfig {
    /// The default pressure check interval, in chunks.
    pub const DEFAULT_CHECK_EVERY: usize = 10;

    /// Starts at `start_rows` rows per chunk, with a floor of `start_rows / 64` (at least 1)
    /// and a check every [`DEFAULT_CHECK_EVERY`](Self::DEFAULT_CHECK_EVERY) chunks.
    ///
    /// ```
    /// let c = limited_allocator::chunking::ChunkConfig::new(6400, 8);
    /// assert_eq!((c.min_rows, c.check_every, c.bytes_per_row), (100, 10, 8));
    /// ```
    pub fn new(start_rows: usize, bytes_per_row: usize) -> Self {
        Self {
            start_rows,
            min_rows: (start_rows / 64).max(1),
            check_every: Self::DEFAULT_CHECK_EVERY,
            bytes_per_row,
        }
    }

    /// Sets the floor chunk size.
    ///
    /// ```
    /// let c = limited_allocator::chunking::ChunkConfig::new(1000, 8).with_min_rows(10);
    /// assert_eq!(c.min_rows, 10);
    /// ```
    pub fn with_min_rows(mut self, rows: usize) -> Self {
        self.min_rows = rows;
        self
    }

    /// Sets the pressure check interval, in chunks.
    ///
    /// ```
    /// let c = limited_allocator::chunking::ChunkConfig::new(1000, 8).with_check_every(1);
    /// assert_eq!(c.check_every, 1);
    /// ```
    pub fn with_check_every(mut self, chunks: usize) -> Self {
        self.check_every = chunks;
        self
    }

    /// Rejects a zero start size, a zero floor, a floor above the start size, and a zero
    /// check interval.
    ///
    /// ```
    /// use limited_allocator::chunking::{ChunkConfig, ChunkError};
    /// let bad = ChunkConfig::new(100, 8).with_min_rows(200);
    /// assert_eq!(bad.validate(), Err(ChunkError::FloorAboveStart { min_rows: 200, start_rows: 100 }));
    /// ```
    pub fn validate(&self) -> Result<(), ChunkError> {
        if self.start_rows == 0 {
            Err(ChunkError::ZeroStart)
        } else if self.min_rows == 0 {
            Err(ChunkError::ZeroFloor)
        } else if self.min_rows > self.start_rows {
            Err(ChunkError::FloorAboveStart {
                min_rows: self.min_rows,
                start_rows: self.start_rows,
            })
        } else if self.check_every == 0 {
            Err(ChunkError::ZeroInterval)
        } else {
            Ok(())
        }
    }
}

/// Why chunked processing could not start or go on.
///
/// ```
/// use limited_allocator::LimitedAllocator;
/// use limited_allocator::chunking::{AdaptiveChunker, ChunkConfig, ChunkError};
/// let budget = LimitedAllocator::new(std::alloc::System, 1000);
/// let err = AdaptiveChunker::new(&budget, 10, ChunkConfig::new(10, 1).with_check_every(0))
///     .unwrap_err();
/// assert_eq!(err, ChunkError::ZeroInterval);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// [`ChunkConfig::start_rows`] is 0.
    #[error("invalid chunk config: the start chunk size is 0 rows (it must be at least 1)")]
    ZeroStart,
    /// [`ChunkConfig::min_rows`] is 0.
    #[error("invalid chunk config: the floor chunk size is 0 rows (it must be at least 1)")]
    ZeroFloor,
    /// [`ChunkConfig::min_rows`] is above [`ChunkConfig::start_rows`].
    #[error(
        "invalid chunk config: the floor chunk size of {min_rows} rows is above the start \
         size of {start_rows} rows"
    )]
    FloorAboveStart {
        /// The floor asked for.
        min_rows: usize,
        /// The start size asked for.
        start_rows: usize,
    },
    /// [`ChunkConfig::check_every`] is 0.
    #[error(
        "invalid chunk config: the pressure check interval is 0 chunks (it must be at least 1)"
    )]
    ZeroInterval,
    /// Not even the floor chunk's estimated bytes fit in the source's headroom.
    #[error(
        "cannot afford the smallest chunk: {rows} rows need {requested} bytes, but \
         {current} of the {limit} bytes limit are in use ({available} bytes available, \
         {level} pressure)"
    )]
    CannotAfford {
        /// Rows of the floor chunk (fewer at the end of the table).
        rows: usize,
        /// Their estimated bytes.
        requested: usize,
        /// Bytes in use at the check (of the tightest limit, for a monitor).
        current: usize,
        /// The limit they count against.
        limit: usize,
        /// `limit - current`, saturating.
        available: usize,
        /// The pressure level at the check.
        level: PressureLevel,
    },
}

/// Chunks handed out and time spent at one pressure level.
///
/// ```
/// let t = limited_allocator::chunking::LevelTime::default();
/// assert_eq!((t.chunks, t.time), (0, std::time::Duration::ZERO));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LevelTime {
    /// Chunks handed out while this was the level last read.
    pub chunks: u64,
    /// Time from handing those chunks out to asking for the next one (their processing).
    pub time: Duration,
}

/// What an [`AdaptiveChunker`] did.
///
/// ```
/// use limited_allocator::LimitedAllocator;
/// use limited_allocator::chunking::{process_in_chunks, ChunkConfig};
/// let budget = LimitedAllocator::new(std::alloc::System, 1 << 20);
/// let report = process_in_chunks(&budget, 1000, ChunkConfig::new(100, 8), |_rows| {})?;
/// assert_eq!((report.chunks, report.rows, report.shrinks), (10, 1000, 0));
/// # Ok::<(), limited_allocator::chunking::ChunkError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ChunkReport {
    /// Chunks handed out.
    pub chunks: u64,
    /// Rows handed out.
    pub rows: usize,
    /// Times the chunk size went down (pressure or affordability).
    pub shrinks: u64,
    /// Times the chunk size went up (Low pressure).
    pub grows: u64,
    /// Release rounds run (hooks plus [`release_free_memory`]).
    pub releases: u64,
    /// The smallest chunk size chosen (0 before the first chunk).
    pub smallest_chunk_rows: usize,
    /// The chunk size in force now.
    pub chunk_rows: usize,
    /// Chunks and time per level, indexed by [`PressureLevel::index`].
    pub per_level: [LevelTime; 4],
    /// Time since the chunker was created (until the last chunk was finished, once done).
    pub elapsed: Duration,
}

impl ChunkReport {
    /// Chunks and time at `level`.
    ///
    /// ```
    /// use limited_allocator::PressureLevel;
    /// use limited_allocator::chunking::ChunkReport;
    /// assert_eq!(ChunkReport::default().at(PressureLevel::High).chunks, 0);
    /// ```
    pub fn at(&self, level: PressureLevel) -> LevelTime {
        self.per_level[level.index()]
    }
}

/// Hands out row ranges sized by memory pressure.
///
/// Every [`check_every`](ChunkConfig::check_every) chunks (and before the first) it reads
/// the budget's [`PressureLevel`]: at Low the chunk size doubles (one step per check, never
/// above [`start_rows`](ChunkConfig::start_rows)), at Medium it stays, at High it halves, and
/// at Critical it first runs the release hooks and [`release_free_memory`], reads the
/// level again and, if still Critical, quarters (never below
/// [`min_rows`](ChunkConfig::min_rows)). Before each chunk it shrinks the chunk to the rows
/// whose estimated bytes fit in the budget's headroom; when not even the floor chunk fits
/// (after one release round) it yields [`ChunkError::CannotAfford`] and then ends.
///
/// ```
/// use limited_allocator::LimitedAllocator;
/// use limited_allocator::chunking::{AdaptiveChunker, ChunkConfig};
///
/// let budget = LimitedAllocator::new(std::alloc::System, 1 << 20);
/// let _pressure = budget.try_reserve(900 << 10)?; // 86 %: High
/// let config = ChunkConfig::new(1000, 16).with_min_rows(100).with_check_every(2);
/// let mut chunker = AdaptiveChunker::new(&budget, 3000, config)?;
/// let mut sizes = Vec::new();
/// while let Some(range) = chunker.next_chunk() {
///     sizes.push(range?.len());
/// }
/// assert_eq!(&sizes[..4], &[500, 500, 250, 250]); // halved at every check
/// assert_eq!(chunker.report().shrinks, 4);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct AdaptiveChunker<'a, S: ?Sized = LimitedAllocator> {
    budget: &'a S,
    config: ChunkConfig,
    total_rows: usize,
    next_row: usize,
    chunk_rows: usize,
    since_check: usize,
    level: PressureLevel,
    hooks: Vec<Box<dyn FnMut() + 'a>>,
    report: ChunkReport,
    started: Instant,
    /// When the previous chunk was handed out, while it is being processed.
    last: Option<Instant>,
    done: bool,
}

impl<'a, S: PressureSource + ?Sized> AdaptiveChunker<'a, S> {
    /// A chunker over rows `0..total_rows`, steered by `budget` (any [`PressureSource`]);
    /// fails on a bad `config`.
    ///
    /// ```
    /// use limited_allocator::LimitedAllocator;
    /// use limited_allocator::chunking::{AdaptiveChunker, ChunkConfig, ChunkError};
    /// let budget = LimitedAllocator::new(std::alloc::System, 1000);
    /// let bad = ChunkConfig::new(10, 1).with_min_rows(0);
    /// assert_eq!(AdaptiveChunker::new(&budget, 5, bad).err(), Some(ChunkError::ZeroFloor));
    /// ```
    pub fn new(budget: &'a S, total_rows: usize, config: ChunkConfig) -> Result<Self, ChunkError> {
        config.validate()?;
        Ok(Self {
            budget,
            config,
            total_rows,
            next_row: 0,
            chunk_rows: config.start_rows,
            since_check: 0,
            level: PressureLevel::Low,
            hooks: Vec::new(),
            report: ChunkReport {
                chunk_rows: config.start_rows,
                ..ChunkReport::default()
            },
            started: Instant::now(),
            last: None,
            done: false,
        })
    }

    /// Registers a hook run at Critical pressure (before the chunk size is cut), e.g. one
    /// that drops a cache. Hooks run in registration order, then [`release_free_memory`].
    ///
    /// ```
    /// use limited_allocator::LimitedAllocator;
    /// use limited_allocator::chunking::{AdaptiveChunker, ChunkConfig};
    /// let budget = LimitedAllocator::new(std::alloc::System, 1000);
    /// let mut cache = vec![1, 2, 3];
    /// let mut chunker = AdaptiveChunker::new(&budget, 10, ChunkConfig::new(5, 1))?;
    /// chunker.add_release_hook(move || cache.clear());
    /// # Ok::<(), limited_allocator::chunking::ChunkError>(())
    /// ```
    pub fn add_release_hook(&mut self, hook: impl FnMut() + 'a) -> &mut Self {
        self.hooks.push(Box::new(hook));
        self
    }

    /// The chunk size in force now, in rows.
    ///
    /// ```
    /// use limited_allocator::LimitedAllocator;
    /// use limited_allocator::chunking::{AdaptiveChunker, ChunkConfig};
    /// let budget = LimitedAllocator::new(std::alloc::System, 1000);
    /// let chunker = AdaptiveChunker::new(&budget, 10, ChunkConfig::new(5, 1))?;
    /// assert_eq!(chunker.chunk_rows(), 5);
    /// # Ok::<(), limited_allocator::chunking::ChunkError>(())
    /// ```
    pub fn chunk_rows(&self) -> usize {
        self.chunk_rows
    }

    /// The pressure level read at the last check.
    ///
    /// ```
    /// use limited_allocator::{LimitedAllocator, PressureLevel};
    /// use limited_allocator::chunking::{AdaptiveChunker, ChunkConfig};
    /// let budget = LimitedAllocator::new(std::alloc::System, 1000);
    /// let chunker = AdaptiveChunker::new(&budget, 10, ChunkConfig::new(5, 1))?;
    /// assert_eq!(chunker.level(), PressureLevel::Low);
    /// # Ok::<(), limited_allocator::chunking::ChunkError>(())
    /// ```
    pub fn level(&self) -> PressureLevel {
        self.level
    }

    /// What the chunker did so far.
    ///
    /// ```
    /// use limited_allocator::LimitedAllocator;
    /// use limited_allocator::chunking::{AdaptiveChunker, ChunkConfig};
    /// let budget = LimitedAllocator::new(std::alloc::System, 1000);
    /// let mut chunker = AdaptiveChunker::new(&budget, 10, ChunkConfig::new(5, 1))?;
    /// chunker.next_chunk();
    /// assert_eq!(chunker.report().rows, 5);
    /// # Ok::<(), limited_allocator::chunking::ChunkError>(())
    /// ```
    pub fn report(&self) -> ChunkReport {
        let mut report = self.report.clone();
        if !self.done {
            report.elapsed = self.started.elapsed();
        }
        report
    }

    /// The next row range, `None` when all rows were handed out (or after an error).
    /// Reads the pressure when a check is due and checks that the chunk is affordable.
    ///
    /// ```
    /// use limited_allocator::LimitedAllocator;
    /// use limited_allocator::chunking::{AdaptiveChunker, ChunkConfig};
    /// let budget = LimitedAllocator::new(std::alloc::System, 1000);
    /// let mut chunker = AdaptiveChunker::new(&budget, 12, ChunkConfig::new(5, 1))?;
    /// assert_eq!(chunker.next_chunk(), Some(Ok(0..5)));
    /// assert_eq!(chunker.next_chunk(), Some(Ok(5..10)));
    /// assert_eq!(chunker.next_chunk(), Some(Ok(10..12)));
    /// assert_eq!(chunker.next_chunk(), None);
    /// # Ok::<(), limited_allocator::chunking::ChunkError>(())
    /// ```
    pub fn next_chunk(&mut self) -> Option<Result<Range<usize>, ChunkError>> {
        self.close_previous();
        if self.done || self.next_row >= self.total_rows {
            self.finish();
            return None;
        }
        if self.since_check == 0 {
            self.adapt();
        }
        self.since_check = (self.since_check + 1) % self.config.check_every;
        let rows = match self.afford() {
            Ok(rows) => rows,
            Err(e) => {
                self.finish();
                return Some(Err(e));
            }
        };
        let range = self.next_row..self.next_row + rows;
        self.next_row = range.end;
        let r = &mut self.report;
        r.chunks += 1;
        r.rows += rows;
        r.chunk_rows = self.chunk_rows;
        r.smallest_chunk_rows = if r.chunks == 1 {
            self.chunk_rows
        } else {
            r.smallest_chunk_rows.min(self.chunk_rows)
        };
        r.per_level[self.level.index()].chunks += 1;
        self.last = Some(Instant::now());
        Some(Ok(range))
    }

    /// Attributes the previous chunk's processing time to the level it was handed out at.
    fn close_previous(&mut self) {
        if let Some(last) = self.last.take() {
            self.report.per_level[self.level.index()].time += last.elapsed();
        }
    }

    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.report.elapsed = self.started.elapsed();
        }
    }

    fn set_rows(&mut self, rows: usize) {
        if rows < self.chunk_rows {
            self.report.shrinks += 1;
        } else if rows > self.chunk_rows {
            self.report.grows += 1;
        }
        self.chunk_rows = rows;
        self.report.chunk_rows = rows;
    }

    /// Runs the release hooks and [`release_free_memory`].
    fn release(&mut self) {
        for hook in &mut self.hooks {
            hook();
        }
        release_free_memory();
        self.report.releases += 1;
    }

    /// Reads the pressure and resizes the chunk for it.
    fn adapt(&mut self) {
        let mut level = self.budget.pressure_level();
        if level == PressureLevel::Critical {
            self.release();
            self.budget.refresh();
            level = self.budget.pressure_level();
        }
        self.level = level;
        let (rows, floor) = (self.chunk_rows, self.config.min_rows);
        let next = match level {
            PressureLevel::Low => rows.saturating_mul(2).min(self.config.start_rows),
            PressureLevel::Medium => rows,
            PressureLevel::High => (rows / 2).max(floor),
            PressureLevel::Critical => (rows / 4).max(floor),
        };
        self.set_rows(next);
    }

    /// The rows of the next chunk, shrinking the chunk size to what the budget can afford.
    fn afford(&mut self) -> Result<usize, ChunkError> {
        let remaining = self.total_rows - self.next_row;
        let rows = self.chunk_rows.min(remaining);
        let per_row = self.config.bytes_per_row;
        if per_row == 0 {
            return Ok(rows);
        }
        let floor = self.config.min_rows.min(remaining);
        let Some(mut room) = self.budget.headroom() else {
            return Ok(rows);
        };
        let mut can = room.available() / per_row;
        if can < floor {
            self.release();
            self.budget.refresh();
            room = self.budget.headroom().unwrap_or(room);
            can = room.available() / per_row;
        }
        if can < floor {
            return Err(ChunkError::CannotAfford {
                rows: floor,
                requested: floor.saturating_mul(per_row),
                current: room.current,
                limit: room.limit,
                available: room.available(),
                level: self.budget.pressure_level(),
            });
        }
        if can < rows {
            // `can >= floor` and `floor == min_rows` here (a smaller floor would be the
            // remaining rows, and `can < rows <= remaining`), so the floor holds.
            self.set_rows(can);
            return Ok(can);
        }
        Ok(rows)
    }
}

impl<S: PressureSource + ?Sized> Iterator for AdaptiveChunker<'_, S> {
    type Item = Result<Range<usize>, ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_chunk()
    }
}

impl<S: ?Sized> fmt::Debug for AdaptiveChunker<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveChunker")
            .field("config", &self.config)
            .field("total_rows", &self.total_rows)
            .field("next_row", &self.next_row)
            .field("chunk_rows", &self.chunk_rows)
            .field("level", &self.level)
            .field("hooks", &self.hooks.len())
            .finish_non_exhaustive()
    }
}

/// Runs `process` on every chunk of rows `0..total_rows`, sized by an [`AdaptiveChunker`]
/// steered by `budget` (any [`PressureSource`]: the allocator, a monitor, a closure);
/// returns its report, or the error that stopped it.
///
/// ```
/// use limited_allocator::LimitedAllocator;
/// use limited_allocator::chunking::{process_in_chunks, ChunkConfig};
///
/// let budget = LimitedAllocator::new(std::alloc::System, 1 << 20);
/// let data: Vec<u64> = (0..10_000).collect();
/// let mut sum = 0;
/// let report = process_in_chunks(&budget, data.len(), ChunkConfig::new(1024, 8), |rows| {
///     sum += data[rows].iter().sum::<u64>();
/// })?;
/// assert_eq!(sum, 49_995_000);
/// assert_eq!(report.rows, 10_000);
/// # Ok::<(), limited_allocator::chunking::ChunkError>(())
/// ```
pub fn process_in_chunks<S: PressureSource + ?Sized>(
    budget: &S,
    total_rows: usize,
    config: ChunkConfig,
    mut process: impl FnMut(Range<usize>),
) -> Result<ChunkReport, ChunkError> {
    let mut chunker = AdaptiveChunker::new(budget, total_rows, config)?;
    while let Some(range) = chunker.next_chunk() {
        process(range?);
    }
    Ok(chunker.report())
}

/// Slicing `arrow_buffer` buffers by a chunk's row range (feature `arrow`): zero-copy, like
/// their `slice(offset, len)`. For an `arrow_array::RecordBatch` use
/// `batch.slice(range.start, range.len())`.
///
/// ```
/// use arrow_buffer::ScalarBuffer;
/// use limited_allocator::chunking::SliceRows;
/// let values = ScalarBuffer::from(vec![1i64, 2, 3, 4, 5]);
/// assert_eq!(&values.slice_rows(1..4)[..], &[2, 3, 4]);
/// ```
#[cfg(feature = "arrow")]
pub trait SliceRows: Sized {
    /// The rows `rows.start..rows.end` of `self`, sharing its memory.
    fn slice_rows(&self, rows: Range<usize>) -> Self;
}

#[cfg(feature = "arrow")]
impl<T: arrow_buffer::ArrowNativeType> SliceRows for arrow_buffer::ScalarBuffer<T> {
    fn slice_rows(&self, rows: Range<usize>) -> Self {
        self.slice(rows.start, rows.len())
    }
}

#[cfg(feature = "arrow")]
impl SliceRows for arrow_buffer::BooleanBuffer {
    fn slice_rows(&self, rows: Range<usize>) -> Self {
        self.slice(rows.start, rows.len())
    }
}

#[cfg(feature = "arrow")]
impl SliceRows for arrow_buffer::NullBuffer {
    fn slice_rows(&self, rows: Range<usize>) -> Self {
        self.slice(rows.start, rows.len())
    }
}

/// The offsets of rows `start..end`: `len + 1` offsets, as for a sliced variable-width
/// array.
#[cfg(feature = "arrow")]
impl<O: arrow_buffer::ArrowNativeType> SliceRows for arrow_buffer::OffsetBuffer<O> {
    fn slice_rows(&self, rows: Range<usize>) -> Self {
        self.slice(rows.start, rows.len())
    }
}
