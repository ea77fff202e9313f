//! A recorded run: allocated bytes, RSS and the limits over time, with the pressure level,
//! and (feature `timeline`) an SVG chart of it.
//!
//! The monitor records one [`TimelinePoint`] per sample when built with
//! [`MonitorBuilder::record_timeline`](crate::monitor::MonitorBuilder::record_timeline). A timeline
//! holds at most its capacity of points; when full it drops every second point, so a long
//! run keeps its whole shape at a coarser resolution instead of losing its beginning.
//!
//! With the `timeline` feature, [`Timeline::render_svg`] draws allocated bytes, RSS and
//! the limit against time, with the pressure level as coloured bands behind them
//! (`plotters`, SVG backend only, no fonts or bitmaps from the system).

use crate::PressureLevel;
use std::time::Duration;

/// One recorded sample.
///
/// ```
/// use limited_allocator::PressureLevel;
/// use limited_allocator::timeline::TimelinePoint;
/// use std::time::Duration;
/// let p = TimelinePoint {
///     elapsed: Duration::from_secs(1),
///     allocated_bytes: Some(1 << 20),
///     rss_bytes: Some(3 << 20),
///     allocator_limit_bytes: Some(8 << 20),
///     process_limit_bytes: None,
///     level: PressureLevel::Low,
/// };
/// assert_eq!(p.limit_bytes(), Some(8 << 20));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct TimelinePoint {
    /// Time since the monitor started.
    pub elapsed: Duration,
    /// Bytes charged to the allocator, when there is one.
    pub allocated_bytes: Option<u64>,
    /// Process RSS (`VmRSS`).
    pub rss_bytes: Option<u64>,
    /// The allocator's limit, when there is an allocator with a finite limit.
    pub allocator_limit_bytes: Option<u64>,
    /// The limit RSS is measured against (`max_process_memory` or the cgroup limit).
    pub process_limit_bytes: Option<u64>,
    /// The combined pressure level after this sample.
    pub level: PressureLevel,
}

impl TimelinePoint {
    /// The limit to draw: the allocator's, else the process limit.
    ///
    /// ```
    /// # use limited_allocator::PressureLevel;
    /// # use limited_allocator::timeline::TimelinePoint;
    /// # use std::time::Duration;
    /// let p = TimelinePoint { elapsed: Duration::ZERO, allocated_bytes: None, rss_bytes: None,
    ///     allocator_limit_bytes: None, process_limit_bytes: Some(5), level: PressureLevel::Low };
    /// assert_eq!(p.limit_bytes(), Some(5));
    /// ```
    pub fn limit_bytes(&self) -> Option<u64> {
        self.allocator_limit_bytes.or(self.process_limit_bytes)
    }
}

/// A bounded record of [`TimelinePoint`]s: when full, every second point is dropped, so a
/// long run keeps its whole shape at a coarser resolution.
///
/// ```
/// use limited_allocator::PressureLevel;
/// use limited_allocator::timeline::{Timeline, TimelinePoint};
/// use std::time::Duration;
/// let mut t = Timeline::with_capacity(4);
/// for i in 0..10u64 {
///     t.push(TimelinePoint {
///         elapsed: Duration::from_secs(i),
///         allocated_bytes: Some(i),
///         rss_bytes: None,
///         allocator_limit_bytes: None,
///         process_limit_bytes: None,
///         level: PressureLevel::Low,
///     });
/// }
/// assert!(t.len() <= 4);
/// assert_eq!(t.points()[0].elapsed, Duration::ZERO); // the start is kept
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Timeline {
    points: Vec<TimelinePoint>,
    capacity: usize,
}

impl Timeline {
    /// The default capacity: 4096 points (about an hour at a 1 s interval before the first
    /// thinning).
    pub const DEFAULT_CAPACITY: usize = 4096;

    /// An empty timeline holding at most `capacity` points (at least 2).
    ///
    /// ```
    /// let t = limited_allocator::timeline::Timeline::with_capacity(100);
    /// assert!(t.is_empty());
    /// ```
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            points: Vec::new(),
            capacity: capacity.max(2),
        }
    }

    /// Appends a point, thinning the record to every second point first if it is full.
    ///
    /// ```
    /// # use limited_allocator::PressureLevel;
    /// # use limited_allocator::timeline::{Timeline, TimelinePoint};
    /// # use std::time::Duration;
    /// let mut t = Timeline::with_capacity(10);
    /// t.push(TimelinePoint { elapsed: Duration::ZERO, allocated_bytes: None, rss_bytes: None,
    ///     allocator_limit_bytes: None, process_limit_bytes: None, level: PressureLevel::Low });
    /// assert_eq!(t.len(), 1);
    /// ```
    pub fn push(&mut self, point: TimelinePoint) {
        if self.capacity == 0 {
            self.capacity = Self::DEFAULT_CAPACITY;
        }
        if self.points.len() >= self.capacity {
            let mut i = 0;
            self.points.retain(|_| {
                i += 1;
                i % 2 == 1
            });
        }
        self.points.push(point);
    }

    /// The recorded points, oldest first.
    ///
    /// ```
    /// assert!(limited_allocator::timeline::Timeline::default().points().is_empty());
    /// ```
    pub fn points(&self) -> &[TimelinePoint] {
        &self.points
    }

    /// The number of points.
    ///
    /// ```
    /// assert_eq!(limited_allocator::timeline::Timeline::default().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether nothing was recorded.
    ///
    /// ```
    /// assert!(limited_allocator::timeline::Timeline::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// Why a timeline could not be drawn or written.
#[cfg(feature = "timeline")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TimelineError {
    /// Fewer than two points were recorded, so there is no time axis.
    #[error("a timeline chart needs at least 2 points, {points} recorded")]
    TooFewPoints {
        /// The number of recorded points.
        points: usize,
    },
    /// The chart could not be drawn (a plotters error).
    #[error("drawing the timeline chart failed: {0}")]
    Draw(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The SVG file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file that was being written.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

#[cfg(feature = "timeline")]
mod svg {
    use super::*;
    use plotters::prelude::*;

    const MIB: f64 = (1u64 << 20) as f64;

    fn band_color(level: PressureLevel) -> RGBAColor {
        match level {
            PressureLevel::Low => RGBColor(46, 160, 67).mix(0.10),
            PressureLevel::Medium => RGBColor(230, 190, 0).mix(0.22),
            PressureLevel::High => RGBColor(240, 120, 0).mix(0.25),
            PressureLevel::Critical => RGBColor(220, 30, 30).mix(0.28),
        }
    }

    impl Timeline {
        /// Draws the chart as an SVG document of `width` x `height` pixels: allocated
        /// bytes, RSS and the limit in MiB over seconds, with the pressure levels as
        /// background bands (green low, yellow medium, orange high, red critical).
        ///
        /// ```
        /// # use limited_allocator::PressureLevel;
        /// # use limited_allocator::timeline::{Timeline, TimelinePoint};
        /// # use std::time::Duration;
        /// let mut t = Timeline::default();
        /// for i in 0..5u64 {
        ///     t.push(TimelinePoint { elapsed: Duration::from_secs(i), allocated_bytes: Some(i << 20),
        ///         rss_bytes: Some((i + 2) << 20), allocator_limit_bytes: Some(6 << 20),
        ///         process_limit_bytes: None, level: PressureLevel::from_index(i as usize) });
        /// }
        /// let svg = t.render_svg(800, 400)?;
        /// assert!(svg.starts_with("<svg"));
        /// # Ok::<(), limited_allocator::timeline::TimelineError>(())
        /// ```
        pub fn render_svg(&self, width: u32, height: u32) -> Result<String, TimelineError> {
            if self.points.len() < 2 {
                return Err(TimelineError::TooFewPoints {
                    points: self.points.len(),
                });
            }
            let mut out = String::new();
            draw(&self.points, &mut out, (width.max(200), height.max(150)))
                .map_err(|e| TimelineError::Draw(e.to_string().into()))?;
            Ok(out)
        }

        /// Renders a 1000 x 500 chart and writes it to `path` (e.g. `memory-timeline.svg`).
        ///
        /// ```no_run
        /// # let timeline = limited_allocator::timeline::Timeline::default();
        /// timeline.write_svg("memory-timeline.svg")?;
        /// # Ok::<(), limited_allocator::timeline::TimelineError>(())
        /// ```
        pub fn write_svg(&self, path: impl AsRef<std::path::Path>) -> Result<(), TimelineError> {
            let svg = self.render_svg(1000, 500)?;
            std::fs::write(path.as_ref(), svg).map_err(|source| TimelineError::Write {
                path: path.as_ref().to_path_buf(),
                source,
            })
        }
    }

    fn draw(
        points: &[TimelinePoint],
        out: &mut String,
        size: (u32, u32),
    ) -> Result<(), Box<dyn std::error::Error>> {
        let secs = |p: &TimelinePoint| p.elapsed.as_secs_f64();
        let mib = |b: u64| b as f64 / MIB;
        let t_end = secs(&points[points.len() - 1]).max(secs(&points[0]) + 1e-3);
        let t_start = secs(&points[0]);
        let y_max = points
            .iter()
            .flat_map(|p| [p.allocated_bytes, p.rss_bytes, p.limit_bytes()])
            .flatten()
            .map(mib)
            .fold(1.0f64, f64::max)
            * 1.1;

        let root = SVGBackend::with_string(out, size).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("memory over time", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(t_start..t_end, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("MiB")
            .light_line_style(WHITE.mix(0.0))
            .draw()?;

        // Level bands: one rectangle per run of equal levels.
        let mut run_start = 0;
        for i in 1..=points.len() {
            if i == points.len() || points[i].level != points[run_start].level {
                let end = if i == points.len() {
                    t_end
                } else {
                    secs(&points[i])
                };
                let color = band_color(points[run_start].level);
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(secs(&points[run_start]), 0.0), (end, y_max)],
                    color.filled(),
                )))?;
                run_start = i;
            }
        }

        type Getter = fn(&TimelinePoint) -> Option<u64>;
        let series: [(&str, RGBColor, Getter); 3] = [
            ("allocated", RGBColor(31, 119, 180), |p| p.allocated_bytes),
            ("rss", RGBColor(148, 103, 189), |p| p.rss_bytes),
            ("limit", RGBColor(200, 0, 0), |p| p.limit_bytes()),
        ];
        for (name, color, get) in series {
            let line: Vec<(f64, f64)> = points
                .iter()
                .filter_map(|p| get(p).map(|v| (secs(p), mib(v))))
                .collect();
            if line.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(line, color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(i: u64, level: PressureLevel) -> TimelinePoint {
        TimelinePoint {
            elapsed: Duration::from_secs(i),
            allocated_bytes: Some(i << 20),
            rss_bytes: Some((i + 10) << 20),
            allocator_limit_bytes: Some(100 << 20),
            process_limit_bytes: None,
            level,
        }
    }

    #[test]
    fn thinning_keeps_the_whole_run_and_the_bound() {
        let mut t = Timeline::with_capacity(8);
        for i in 0..100 {
            t.push(point(i, PressureLevel::Low));
            assert!(t.len() <= 8);
        }
        assert_eq!(t.points()[0].elapsed, Duration::ZERO);
        assert_eq!(t.points().last().unwrap().elapsed, Duration::from_secs(99));
        assert!(t.points().windows(2).all(|w| w[0].elapsed < w[1].elapsed));
    }

    #[cfg(feature = "timeline")]
    #[test]
    fn svg_has_the_three_lines_the_bands_and_the_legend() {
        let mut t = Timeline::default();
        assert!(matches!(
            t.render_svg(800, 400),
            Err(TimelineError::TooFewPoints { points: 0 })
        ));
        for i in 0..40 {
            t.push(point(i, PressureLevel::from_index(i as usize / 10)));
        }
        let svg = t.render_svg(800, 400).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        for name in ["allocated", "rss", "limit", "seconds", "MiB"] {
            assert!(svg.contains(name), "missing {name}");
        }
        // One band per level run: 4 runs.
        let bands = svg.matches("<rect").count();
        assert!(bands >= 4, "{bands} rects");
        assert!(svg.matches("<polyline").count() >= 3);
    }
}
