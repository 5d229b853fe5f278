//! The colours of grounding groups on the canvas and in the text.

/// A fixed, colour-blind-safe palette (Okabe–Ito), indexed by the group's number.
pub const PALETTE: [&str; 7] = [
    "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
];

/// The colour of the group numbered `index` (0-based, in order over the conversation).
pub fn colour(index: usize) -> &'static str {
    PALETTE[index % PALETTE.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_cycle_through_the_palette() {
        assert_eq!(colour(0), colour(PALETTE.len()));
        assert_ne!(colour(0), colour(1));
    }
}
