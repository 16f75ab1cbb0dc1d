//! Unit tests of websocket frame tracking.

use super::*;

#[test]
fn frame_boundaries_are_followed_across_reads() {
    let mut tracker = FrameTracker::default();
    // A 5-byte text frame, then a 200-byte binary frame split in three reads.
    tracker.feed(&[0x81, 0x05, b'h', b'e', b'l', b'l', b'o']);
    assert!(tracker.at_boundary());
    tracker.feed(&[0x82, 126]);
    assert!(!tracker.at_boundary());
    tracker.feed(&[0x00, 200]);
    tracker.feed(&[0u8; 150]);
    assert!(!tracker.at_boundary());
    tracker.feed(&[0u8; 50]);
    assert!(tracker.at_boundary());
}
