//! `define_batch` lists sent in parts ([`gvm_proto::BatchPart`]): a list longer than
//! one call ([`gvm_proto::MAX_BATCH`] items) is checked part by part and held here, in
//! memory, until its last part stores it whole with one group commit, so a list is
//! defined entirely or not at all whatever its length.
//!
//! Pure bookkeeping (the handler checks items against the host and the store). Bounds:
//! at most [`MAX_OPEN`] lists at once, [`gvm_proto::MAX_BATCH_LIST`] items in one (the
//! request check), and a list whose next part does not come within [`IDLE`] is dropped:
//! its client died or gave up.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gvm_proto::{BatchPart, DefineParams, ErrorCode};
use uuid::Uuid;

/// Most lists held at once.
pub const MAX_OPEN: usize = 4;

/// How long a list waits for its next part.
pub const IDLE: Duration = Duration::from_secs(60);

/// Why a part was refused; the list it belongs to is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    /// A part after the first of a list that is not held.
    #[error(
        "define_batch list {batch} is not open (its first part did not come, a part \
         failed, or no part came for {} s): send the list again from item 0",
        IDLE.as_secs()
    )]
    NotOpen {
        /// The list.
        batch: Uuid,
    },
    /// A part that does not continue where the held items end.
    #[error(
        "define_batch list {batch}: this part starts at item {offset}, but {held} items \
         came before it: send the parts in order"
    )]
    OutOfOrder {
        /// The list.
        batch: Uuid,
        /// The part's first item.
        offset: usize,
        /// Items held.
        held: usize,
    },
    /// Too many lists being sent at once.
    #[error("{MAX_OPEN} define_batch lists are being sent already: retry when one is stored")]
    TooManyOpen,
    /// A UUID given twice in one list.
    #[error("item {index}: vGPU {uuid} appears twice in the batch (first as item {first})")]
    Twice {
        /// The second item with it.
        index: usize,
        /// The UUID.
        uuid: Uuid,
        /// The first item with it.
        first: usize,
    },
}

impl PartError {
    /// The API error class.
    pub fn code(&self) -> ErrorCode {
        match self {
            PartError::TooManyOpen => ErrorCode::Conflict,
            _ => ErrorCode::InvalidArgument,
        }
    }
}

/// The items of one list received so far.
#[derive(Debug, Default)]
pub struct List {
    /// The items, in list order.
    pub items: Vec<DefineParams>,
    /// Index in the list of each UUID given.
    uuids: BTreeMap<Uuid, usize>,
}

impl List {
    /// Append a part's items (checked against the host by the caller), refusing a
    /// UUID an earlier item of the list gave.
    pub fn extend(&mut self, items: Vec<DefineParams>) -> Result<(), PartError> {
        let base = self.items.len();
        for (n, item) in items.iter().enumerate() {
            let Some(uuid) = item.uuid else { continue };
            if let Some(first) = self.uuids.insert(uuid, base + n) {
                return Err(PartError::Twice {
                    index: base + n,
                    uuid,
                    first,
                });
            }
        }
        self.items.extend(items);
        Ok(())
    }
}

/// The lists being sent.
#[derive(Debug, Default)]
pub struct Lists {
    open: BTreeMap<Uuid, (List, Instant)>,
}

impl Lists {
    /// The list `part` continues, taken out (a new one for a first part). Lists idle
    /// for [`IDLE`] are dropped first. On error the list is dropped.
    pub fn take(&mut self, part: &BatchPart, now: Instant) -> Result<List, PartError> {
        self.open
            .retain(|_, (_, last)| now.saturating_duration_since(*last) < IDLE);
        match self.open.remove(&part.batch) {
            Some((list, _)) if list.items.len() == part.offset => Ok(list),
            Some((list, _)) => Err(PartError::OutOfOrder {
                batch: part.batch,
                offset: part.offset,
                held: list.items.len(),
            }),
            None if part.offset != 0 => Err(PartError::NotOpen { batch: part.batch }),
            None if self.open.len() >= MAX_OPEN => Err(PartError::TooManyOpen),
            None => Ok(List::default()),
        }
    }

    /// Hold `list` for its next part.
    pub fn hold(&mut self, batch: Uuid, list: List, now: Instant) {
        self.open.insert(batch, (list, now));
    }

    /// How many lists are held.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<DefineParams> {
        (0..n)
            .map(|_| DefineParams {
                uuid: Some(Uuid::new_v4()),
                parent: "p".into(),
                type_name: "t".into(),
                autostart: false,
                force: false,
                overrides: Default::default(),
                owner_uids: Vec::new(),
            })
            .collect()
    }

    fn part(batch: u128, offset: usize) -> BatchPart {
        BatchPart {
            batch: Uuid::from_u128(batch),
            offset,
            more: true,
        }
    }

    #[test]
    fn parts_in_order_build_one_list_and_any_other_order_drops_it() {
        let mut lists = Lists::default();
        let t = Instant::now();
        let mut l = lists.take(&part(1, 0), t).unwrap_or_default();
        assert!(l.extend(items(3)).is_ok());
        lists.hold(Uuid::from_u128(1), l, t);
        let l = lists.take(&part(1, 3), t);
        assert_eq!(l.as_ref().map(|l| l.items.len()).ok(), Some(3));
        if let Ok(l) = l {
            lists.hold(Uuid::from_u128(1), l, t);
        }
        assert_eq!(
            lists.take(&part(1, 5), t).err(),
            Some(PartError::OutOfOrder {
                batch: Uuid::from_u128(1),
                offset: 5,
                held: 3
            })
        );
        assert!(lists.is_empty(), "a refused part drops its list");
        assert_eq!(
            lists.take(&part(1, 3), t).err(),
            Some(PartError::NotOpen {
                batch: Uuid::from_u128(1)
            })
        );
    }

    #[test]
    fn a_uuid_given_twice_in_a_list_names_both_items() {
        let mut l = List::default();
        let first = items(300);
        let again = first[42].clone();
        assert!(l.extend(first).is_ok());
        let mut second = items(2);
        second[1] = again.clone();
        assert_eq!(
            l.extend(second).err(),
            Some(PartError::Twice {
                index: 301,
                uuid: again.uuid.unwrap_or_default(),
                first: 42
            })
        );
    }

    #[test]
    fn idle_lists_are_dropped_and_open_lists_are_bounded() {
        let mut lists = Lists::default();
        let t = Instant::now();
        for b in 0..MAX_OPEN as u128 {
            let l = lists.take(&part(b, 0), t).unwrap_or_default();
            lists.hold(Uuid::from_u128(b), l, t);
        }
        assert_eq!(
            lists.take(&part(99, 0), t).err(),
            Some(PartError::TooManyOpen)
        );
        assert_eq!(lists.len(), MAX_OPEN);
        let later = t + IDLE;
        assert!(lists.take(&part(99, 0), later).is_ok());
        assert!(lists.is_empty(), "every list idle for {IDLE:?} is gone");
    }
}
