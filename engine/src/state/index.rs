//! The key index of a state partition: key ─▶ slot (the key's place in `loc`).
//!
//! A key of one `BIGINT` column (the common case: user, device, auction ids) gets a
//! table of its own — open addressing, the key stored inline next to its slot — so a
//! lookup touches one cache line; DataFusion's general tables (any other key) touch
//! three (control bytes, bucket, the key's value), and at millions of keys every one of
//! them is a miss.

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef};
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use parking_lot::Mutex;

use crate::error::Result;

/// An empty entry of [`IntIndex`].
const EMPTY: u32 = u32::MAX;

pub(super) enum KeyIndex {
    /// One non-dictionary `Int64` key column.
    Int(IntIndex),
    /// Any other key. (A mutex only because DataFusion's tables are not `Sync`; every
    /// use has `&mut` and takes it with `get_mut`.)
    General(Mutex<Box<dyn GroupValues>>),
}

impl KeyIndex {
    /// The index for keys of `schema` (the key columns only).
    pub(super) fn new(schema: SchemaRef) -> Result<Self> {
        if schema.fields().len() == 1 && schema.field(0).data_type() == &DataType::Int64 {
            return Ok(Self::Int(IntIndex::default()));
        }
        Ok(Self::General(Mutex::new(new_group_values(
            schema,
            &GroupOrdering::None,
        )?)))
    }

    /// Each row's slot in `slots` (a new key gets the next one).
    pub(super) fn intern(&mut self, keys: &[ArrayRef], slots: &mut Vec<usize>) -> Result<()> {
        match self {
            Self::Int(i) => {
                i.intern(keys[0].as_primitive::<Int64Type>(), slots);
                Ok(())
            }
            Self::General(g) => Ok(g.get_mut().intern(keys, slots)?),
        }
    }

    /// Slots given out.
    pub(super) fn len(&mut self) -> usize {
        match self {
            Self::Int(i) => i.len,
            Self::General(g) => g.get_mut().len(),
        }
    }

    /// Bytes held.
    pub(super) fn size(&self) -> usize {
        match self {
            Self::Int(i) => i.entries.capacity() * std::mem::size_of::<(i64, u32)>(),
            Self::General(g) => g.lock().size(),
        }
    }
}

/// `Int64` key ─▶ slot, linear probing, at most three quarters full.
#[derive(Default)]
pub(super) struct IntIndex {
    /// `(key, slot)`; slot [`EMPTY`]: free.
    entries: Vec<(i64, u32)>,
    /// Slots given out (the null key's included).
    len: usize,
    /// Keys in `entries`.
    used: usize,
    null_slot: Option<u32>,
}

/// Where `key`'s probe starts in a table of `size` entries (a power of two): the high
/// bits of a multiplicative hash, which spread consecutive ids over the table.
fn home(key: i64, size: usize) -> usize {
    ((key as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - size.trailing_zeros())) as usize
}

impl IntIndex {
    fn intern(&mut self, keys: &datafusion::arrow::array::Int64Array, slots: &mut Vec<usize>) {
        slots.clear();
        slots.reserve(keys.len());
        // Room for every row being a new key while staying at most three quarters
        // full, made in one move (not one doubling after another while a large first
        // batch fills the table): no insert below needs to grow it.
        let need = ((self.used + keys.len()) * 4)
            .div_ceil(3)
            .next_power_of_two();
        if self.entries.len() < need {
            self.grow_to(need);
        }
        for (row, key) in keys.values().iter().enumerate() {
            if keys.is_null(row) {
                let slot = *self.null_slot.get_or_insert_with(|| {
                    self.len += 1;
                    (self.len - 1) as u32
                });
                slots.push(slot as usize);
                continue;
            }
            slots.push(self.find_or_insert(*key) as usize);
        }
    }

    /// `key`'s slot, a new one if it is new (the table has room: see `intern`).
    fn find_or_insert(&mut self, key: i64) -> u32 {
        let mask = self.entries.len() - 1;
        let mut at = home(key, self.entries.len());
        loop {
            let (k, slot) = self.entries[at];
            if slot == EMPTY {
                break;
            }
            if k == key {
                return slot;
            }
            at = (at + 1) & mask;
        }
        debug_assert!((self.used + 1) * 4 <= self.entries.len() * 3);
        let slot = self.len as u32;
        self.entries[at] = (key, slot);
        self.len += 1;
        self.used += 1;
        slot
    }

    /// `size` entries (a power of two, at least 1,024 and more than the keys held),
    /// every key moved to its new place.
    fn grow_to(&mut self, size: usize) {
        let size = size.max(1024);
        let old = std::mem::replace(&mut self.entries, vec![(0, EMPTY); size]);
        let mask = size - 1;
        for (key, slot) in old {
            if slot == EMPTY {
                continue;
            }
            let mut at = home(key, size);
            while self.entries[at].1 != EMPTY {
                at = (at + 1) & mask;
            }
            self.entries[at] = (key, slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    /// Slots as a map from key to the order of first appearance would give them,
    /// across batches and the table's growth, extreme values and nulls included; the
    /// general index agrees.
    #[test]
    fn each_key_keeps_the_slot_of_its_first_appearance() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        let mut int = KeyIndex::new(Arc::clone(&schema)).unwrap();
        assert!(matches!(int, KeyIndex::Int(_)));
        let two = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("g", DataType::Int64, true),
        ]));
        assert!(matches!(KeyIndex::new(two).unwrap(), KeyIndex::General(_)));
        let mut general = KeyIndex::General(Mutex::new(
            new_group_values(schema, &GroupOrdering::None).unwrap(),
        ));
        let mut want: HashMap<Option<i64>, usize> = HashMap::new();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for batch in 0..40 {
            let keys: Vec<Option<i64>> = (0..5_000)
                .map(|i| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    match (i + batch) % 997 {
                        0 => None,
                        1 => Some(i64::MIN),
                        2 => Some(i64::MAX),
                        3 => Some(0),
                        // Consecutive ids and scattered ones, some negative.
                        _ if i % 2 == 0 => Some((state % 60_000) as i64 - 30_000),
                        _ => Some(state as i64),
                    }
                })
                .collect();
            let col: ArrayRef = Arc::new(Int64Array::from(keys.clone()));
            let (mut got, mut by_general) = (Vec::new(), Vec::new());
            int.intern(std::slice::from_ref(&col), &mut got).unwrap();
            general.intern(&[col], &mut by_general).unwrap();
            for (key, slot) in keys.iter().zip(&got) {
                let next = want.len();
                assert_eq!(*want.entry(*key).or_insert(next), *slot, "key {key:?}");
            }
            assert_eq!(got, by_general, "batch {batch}");
            assert_eq!(int.len(), want.len());
        }
        assert!(want.len() > 100_000, "{}", want.len());
        assert!(int.size() >= want.len() * 16);
    }
}
