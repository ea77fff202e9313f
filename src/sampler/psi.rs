//! Linux pressure-stall information (PSI) for memory: how much wall time tasks lost waiting
//! for memory, from `/proc/pressure/memory` or a cgroup's `memory.pressure`.

/// Linux pressure-stall information for memory: the share of wall time (in percent) in
/// which some or all tasks were stalled waiting for memory, averaged over 10 s and 60 s.
///
/// ```
/// let psi = limited_allocator::sampler::parse_psi("some avg10=1.50 avg60=0.25 avg300=0.00 total=9\n")
///     .unwrap();
/// assert_eq!(psi.some_avg10, Some(1.5));
/// assert_eq!(psi.full_avg10, None); // no "full" line
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Psi {
    /// `some avg10`: percent of the last 10 s in which at least one task stalled on memory.
    pub some_avg10: Option<f64>,
    /// `some avg60`: the same over 60 s.
    pub some_avg60: Option<f64>,
    /// `full avg10`: percent of the last 10 s in which all non-idle tasks stalled.
    pub full_avg10: Option<f64>,
    /// `full avg60`: the same over 60 s.
    pub full_avg60: Option<f64>,
}

/// Parses the text of `/proc/pressure/memory` or a cgroup's `memory.pressure`.
/// Returns `None` when neither a `some` nor a `full` average can be read.
///
/// ```
/// use limited_allocator::sampler::parse_psi;
/// let text = "some avg10=12.00 avg60=3.00 avg300=1.00 total=1\n\
///             full avg10=4.00 avg60=1.00 avg300=0.50 total=1\n";
/// let psi = parse_psi(text).unwrap();
/// assert_eq!((psi.some_avg10, psi.full_avg60), (Some(12.0), Some(1.0)));
/// assert_eq!(parse_psi("garbage"), None);
/// ```
pub fn parse_psi(text: &str) -> Option<Psi> {
    let mut psi = Psi::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (avg10, avg60) = match words.next() {
            Some("some") => (&mut psi.some_avg10, &mut psi.some_avg60),
            Some("full") => (&mut psi.full_avg10, &mut psi.full_avg60),
            _ => continue,
        };
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let value = value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0);
            match key {
                "avg10" => *avg10 = value,
                "avg60" => *avg60 = value,
                _ => {}
            }
        }
    }
    let any = [
        psi.some_avg10,
        psi.some_avg60,
        psi.full_avg10,
        psi.full_avg60,
    ]
    .iter()
    .any(Option::is_some);
    any.then_some(psi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_parser_takes_what_it_can() {
        assert_eq!(parse_psi(""), None);
        assert_eq!(parse_psi("some avg10= avg60"), None);
        let p = parse_psi("full avg60=3.5\nsome nonsense\n").unwrap();
        assert_eq!((p.full_avg60, p.some_avg10), (Some(3.5), None));
    }
}
