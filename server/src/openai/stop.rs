//! `stop` sequences over streamed text: text is released as soon as it cannot be the start of
//! a stop sequence, and everything from the first stop sequence on is cut off.

/// Holds back the tail that might begin a stop sequence.
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What to do with one piece of generated text.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Send this (possibly empty) text; keep generating.
    Emit(String),
    /// Send this text, then finish with `finish_reason: "stop"` (and cancel the generation).
    Stop(String),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            held: String::new(),
        }
    }

    pub fn push(&mut self, piece: &str) -> Step {
        self.held.push_str(piece);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first {
            let out = self.held[..at].to_string();
            self.held.clear();
            return Step::Stop(out);
        }
        let keep = self.partial_suffix_len();
        let out = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        Step::Emit(out)
    }

    /// The text held back, released when the generation ends without a stop sequence.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of `held` that is a proper prefix of some stop sequence.
    fn partial_suffix_len(&self) -> usize {
        self.held
            .char_indices()
            .map(|(i, _)| &self.held[i..])
            .find(|tail| self.stops.iter().any(|s| s.starts_with(tail)))
            .map_or(0, str::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_stops_everything_passes() {
        let mut m = StopMatcher::new(vec![]);
        assert_eq!(m.push("Hello"), Step::Emit("Hello".into()));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn a_stop_split_across_pieces_is_cut() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("abc E"), Step::Emit("abc ".into()));
        assert_eq!(m.push("N"), Step::Emit(String::new()));
        assert_eq!(m.push("Dxyz"), Step::Stop(String::new()));
    }

    #[test]
    fn a_false_start_is_released() {
        let mut m = StopMatcher::new(vec!["END".into(), "é!".into()]);
        assert_eq!(m.push("EN"), Step::Emit(String::new()));
        assert_eq!(m.push("X é"), Step::Emit("ENX ".into()));
        assert_eq!(m.finish(), "é");
    }

    #[test]
    fn the_earliest_stop_wins() {
        let mut m = StopMatcher::new(vec!["c".into(), "ab".into()]);
        assert_eq!(m.push("xabc"), Step::Stop("x".into()));
    }
}
