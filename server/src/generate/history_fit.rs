//! Which earlier turns go into the prompt when the whole conversation would not fit the context.
//!
//! The rule, shared by the page, `cogvlm chat` and the OpenAI API (all build their prompt through the
//! pipeline): leave out the fewest *oldest* turns so that the prompt leaves room for [`ANSWER_ROOM`] new tokens
//! (or `max_new_tokens` when that is smaller). The image and the latest turns are always kept. When no number
//! of left-out turns leaves that much room, every earlier turn is left out; when the question alone (with the
//! image) does not fit, the request is refused with the numbers.

/// Positions kept free for the answer when turns have to be left out: a conversation that just fits is not
/// answered with a few tokens.
pub const ANSWER_ROOM: usize = 256;

/// The positions to keep free after the prompt for a request with this `max_new_tokens`.
pub fn answer_room(max_new_tokens: Option<usize>) -> usize {
    max_new_tokens.map_or(ANSWER_ROOM, |n| n.clamp(1, ANSWER_ROOM))
}

/// How many of `turns` oldest turns to leave out, given `prompt_len(k)`: the prompt's length with the `k`
/// oldest turns left out (it never grows with `k`). `Ok(None)`: the prompt without any earlier turn still
/// leaves no position for the answer within `max_length`.
pub fn turns_to_drop<E>(
    turns: usize,
    max_length: usize,
    room: usize,
    mut prompt_len: impl FnMut(usize) -> Result<usize, E>,
) -> Result<Option<usize>, E> {
    let fits = |len: usize, room: usize| len + room <= max_length;
    if fits(prompt_len(0)?, room) {
        return Ok(Some(0));
    }
    if !fits(prompt_len(turns)?, room) {
        // The question alone leaves less than the room: keep only it, if it leaves anything.
        return Ok(fits(prompt_len(turns)?, 1).then_some(turns));
    }
    // prompt_len(lo) does not fit, prompt_len(hi) does: bisect (each probe tokenizes the prompt once).
    let (mut lo, mut hi) = (0, turns);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(prompt_len(mid)?, room) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(Some(hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prompt of `base` positions plus turns of the given lengths, the oldest first.
    fn lengths(base: usize, turns: &[usize]) -> impl FnMut(usize) -> Result<usize, ()> + '_ {
        move |k| Ok(base + turns[k..].iter().sum::<usize>())
    }

    #[test]
    fn a_fitting_conversation_keeps_every_turn() {
        assert_eq!(
            turns_to_drop(3, 2048, 256, lengths(1300, &[100, 100, 100])),
            Ok(Some(0))
        );
    }

    #[test]
    fn the_fewest_oldest_turns_are_left_out() {
        // 1300 + 6 × 100 = 1900: two turns must go for 256 positions of room (1700 + 256 ≤ 2048).
        let turns = [100; 6];
        assert_eq!(
            turns_to_drop(6, 2048, 256, lengths(1300, &turns)),
            Ok(Some(2))
        );
        // Uneven turns: the long oldest one alone is enough.
        assert_eq!(
            turns_to_drop(3, 2048, 256, lengths(1300, &[600, 10, 10])),
            Ok(Some(1))
        );
        // The answer room follows max_new_tokens when smaller.
        assert_eq!(
            turns_to_drop(6, 2048, answer_room(Some(200)), lengths(1300, &turns)),
            Ok(Some(1))
        );
    }

    #[test]
    fn a_long_question_drops_all_history_or_is_refused() {
        // Without history 1900 + 256 > 2048 but 1900 < 2048: all turns go, the answer gets what is left.
        assert_eq!(
            turns_to_drop(2, 2048, 256, lengths(1900, &[50, 50])),
            Ok(Some(2))
        );
        assert_eq!(
            turns_to_drop(2, 2048, 256, lengths(2048, &[50, 50])),
            Ok(None)
        );
        assert_eq!(turns_to_drop(0, 2048, 256, lengths(2100, &[])), Ok(None));
    }

    #[test]
    fn every_split_point_is_found() {
        for n in 1..12 {
            for want in 0..=n {
                // Each turn 10 positions; the limit admits exactly n - want of them.
                let turns = vec![10; n];
                let max = 100 + 10 * (n - want) + 5;
                assert_eq!(
                    turns_to_drop(n, max, 5, lengths(100, &turns)),
                    Ok(Some(want)),
                    "n {n} want {want}"
                );
            }
        }
    }

    #[test]
    fn room_is_at_least_one_and_at_most_the_default() {
        assert_eq!(answer_room(None), ANSWER_ROOM);
        assert_eq!(answer_room(Some(0)), 1);
        assert_eq!(answer_room(Some(10_000)), ANSWER_ROOM);
    }
}
