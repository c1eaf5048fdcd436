//! Surveys: a question the server API puts to every other node through the engine's control
//! channel (as Centrifugo's `channels` survey), answered by each node on the same channel and
//! merged by the asking node until every live node answered or [`SURVEY_TIMEOUT`] passed.
//!
//! Guarantees: at most [`MAX_SURVEYS_IN_FLIGHT`] surveys wait at once (one more is refused at
//! once); each keeps a queue of at most one answer per node it waits for; an answer for a
//! survey that ended, or for another node, is dropped; a survey's entry is removed when its
//! waiter ends, however it ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::sync::lock;

/// Surveys waiting for answers at once.
pub const MAX_SURVEYS_IN_FLIGHT: usize = 16;
/// How long a survey waits for the other nodes.
pub const SURVEY_TIMEOUT: Duration = Duration::from_secs(2);

/// Active channels and their subscriber counts, as one node answers a `channels` survey.
pub type ChannelCounts = Vec<(String, usize)>;

/// The surveys this node is waiting on.
#[derive(Default)]
pub struct Surveys {
    next: AtomicU64,
    pending: Arc<Mutex<HashMap<u64, mpsc::Sender<ChannelCounts>>>>,
}

/// One survey's waiting end: receives the answers; its entry goes when it is dropped.
pub struct Waiting {
    /// The survey's id, sent with the question.
    pub id: u64,
    answers: mpsc::Receiver<ChannelCounts>,
    pending: Arc<Mutex<HashMap<u64, mpsc::Sender<ChannelCounts>>>>,
}

impl Surveys {
    /// Opens a survey that expects `nodes` answers; `None` when
    /// [`MAX_SURVEYS_IN_FLIGHT`] are already waiting.
    pub fn open(&self, nodes: usize) -> Option<Waiting> {
        let mut pending = lock(&self.pending);
        if pending.len() >= MAX_SURVEYS_IN_FLIGHT {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (sender, answers) = mpsc::channel(nodes.max(1));
        pending.insert(id, sender);
        Some(Waiting {
            id,
            answers,
            pending: self.pending.clone(),
        })
    }

    /// Hands a node's answer to survey `id`, if it still waits and has room.
    pub fn answer(&self, id: u64, counts: ChannelCounts) {
        if let Some(sender) = lock(&self.pending).get(&id) {
            let _ = sender.try_send(counts);
        }
    }
}

impl Waiting {
    /// Up to `nodes` answers, or fewer when [`SURVEY_TIMEOUT`] passes first.
    pub async fn collect(&mut self, nodes: usize) -> Vec<ChannelCounts> {
        let mut answers = Vec::with_capacity(nodes);
        let deadline = tokio::time::sleep(SURVEY_TIMEOUT);
        tokio::pin!(deadline);
        while answers.len() < nodes {
            tokio::select! {
                answer = self.answers.recv() => match answer {
                    Some(answer) => answers.push(answer),
                    None => break,
                },
                () = &mut deadline => {
                    tracing::warn!(
                        answered = answers.len(),
                        expected = nodes,
                        "server API survey: some nodes did not answer in time"
                    );
                    break;
                }
            }
        }
        answers
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        lock(&self.pending).remove(&self.id);
    }
}

/// Adds `answer` into `merged` (counts of the same channel on several nodes are summed),
/// keeping at most `max` channels.
pub fn merge_counts(merged: &mut HashMap<String, usize>, answer: ChannelCounts, max: usize) {
    for (channel, clients) in answer {
        if let Some(count) = merged.get_mut(&channel) {
            *count += clients;
        } else if merged.len() < max {
            merged.insert(channel, clients);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn answers_are_collected_until_every_node_or_the_deadline() {
        let surveys = Surveys::default();
        let mut waiting = surveys.open(2).expect("room");
        surveys.answer(waiting.id, vec![("a".into(), 1)]);
        surveys.answer(waiting.id + 100, vec![("stray".into(), 1)]);
        surveys.answer(waiting.id, vec![("b".into(), 2)]);
        assert_eq!(waiting.collect(2).await.len(), 2);
        // One node never answers: the deadline ends the wait with what came.
        let mut waiting = surveys.open(2).expect("room");
        surveys.answer(waiting.id, vec![("a".into(), 1)]);
        let started = tokio::time::Instant::now();
        assert_eq!(waiting.collect(2).await.len(), 1);
        assert_eq!(started.elapsed(), SURVEY_TIMEOUT);
    }

    #[test]
    fn surveys_in_flight_are_bounded_and_released_on_drop() {
        let surveys = Surveys::default();
        let open: Vec<Waiting> = (0..MAX_SURVEYS_IN_FLIGHT)
            .map(|_| surveys.open(1).expect("room"))
            .collect();
        assert!(surveys.open(1).is_none());
        let id = open[0].id;
        drop(open);
        assert!(lock(&surveys.pending).is_empty());
        // A late answer for an ended survey is dropped.
        surveys.answer(id, vec![("a".into(), 1)]);
        assert!(surveys.open(1).is_some());
    }

    #[test]
    fn counts_of_one_channel_are_summed_and_the_total_is_capped() {
        let mut merged = HashMap::new();
        merge_counts(&mut merged, vec![("a".into(), 1), ("b".into(), 2)], 2);
        merge_counts(&mut merged, vec![("a".into(), 3), ("c".into(), 1)], 2);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged["a"], 4);
        assert_eq!(merged["b"], 2);
    }
}
