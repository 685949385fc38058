//! Many rows per key in the keyed store: one store row per key holding that key's rows
//! as lists (one list column per non-key column). Session windows keep a key's
//! sessions this way, top-N a key's first N rows.
//!
//! ```text
//!  flat rows (k, a, b)      store row per key (k, [a...], [b...])
//!   k1 a1 b1  ─nest──▶       k1 [a1, a3] [b1, b3]
//!   k2 a2 b2  ◀─explode─     k2 [a2]     [b2]
//!   k1 a3 b3
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, ListArray, RecordBatchOptions, UInt32Array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};

use crate::error::Result;

/// How flat rows map onto the store: which columns are the key, which become lists.
#[derive(Clone, Debug)]
pub(crate) struct Nested {
    /// The flat rows' layout.
    pub flat: SchemaRef,
    /// Positions (in `flat`) of the key columns.
    pub keys: Vec<usize>,
    /// Positions of the columns kept as lists, in the store's value order.
    pub lists: Vec<usize>,
    items: Vec<FieldRef>,
}

impl Nested {
    pub fn new(flat: SchemaRef, keys: Vec<usize>, lists: Vec<usize>) -> Self {
        let items = lists
            .iter()
            .map(|i| Arc::new(Field::new("item", flat.field(*i).data_type().clone(), true)))
            .collect();
        Self {
            flat,
            keys,
            lists,
            items,
        }
    }

    /// The store's key fields.
    pub fn key_fields(&self) -> Vec<FieldRef> {
        self.keys
            .iter()
            .map(|i| {
                let f = self.flat.field(*i);
                Arc::new(Field::new(f.name(), f.data_type().clone(), true))
            })
            .collect()
    }

    /// The store's value fields: one list per non-key column.
    pub fn list_fields(&self) -> Vec<FieldRef> {
        self.lists
            .iter()
            .zip(&self.items)
            .map(|(i, item)| {
                Arc::new(Field::new(
                    self.flat.field(*i).name(),
                    DataType::List(Arc::clone(item)),
                    true,
                ))
            })
            .collect()
    }

    /// The rows in `lists` (list columns; list row `j` belongs to row `owner[j]` of
    /// `keys`) as flat rows.
    pub fn explode(
        &self,
        keys: &[ArrayRef],
        lists: &[ArrayRef],
        owner: &[usize],
    ) -> Result<RecordBatch> {
        let mut parent = Vec::new();
        let mut elements = Vec::new();
        if let Some(first) = lists.first() {
            let offsets = first.as_list::<i32>().value_offsets();
            for (j, o) in owner.iter().enumerate() {
                let (from, to) = (offsets[j], offsets[j + 1]);
                parent.extend(std::iter::repeat_n(*o as u32, (to - from) as usize));
                elements.extend(from as u32..to as u32);
            }
        }
        let rows = elements.len();
        let (parent, elements) = (UInt32Array::from(parent), UInt32Array::from(elements));
        let mut columns: Vec<Option<ArrayRef>> = vec![None; self.flat.fields().len()];
        for (k, i) in keys.iter().zip(&self.keys) {
            columns[*i] = Some(take(k.as_ref(), &parent, None)?);
        }
        for (list, i) in lists.iter().zip(&self.lists) {
            columns[*i] = Some(take(
                list.as_list::<i32>().values().as_ref(),
                &elements,
                None,
            )?);
        }
        let columns = columns
            .into_iter()
            .enumerate()
            .map(|(i, c)| match c {
                Some(c) => Ok(c),
                None => crate::internal_err!("nested rows miss column {i}"),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.flat),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }

    /// Store rows (keys, lists, and possibly `__updated`) as flat rows.
    pub fn explode_rows(&self, rows: &RecordBatch) -> Result<RecordBatch> {
        let nk = self.keys.len();
        let owner: Vec<usize> = (0..rows.num_rows()).collect();
        let c = rows.columns();
        self.explode(&c[..nk], &c[nk..nk + self.lists.len()], &owner)
    }

    /// The rows of `flat` as one list row per key of `keys` (every flat row's key
    /// must be among them; in their order), and which keys have any row.
    pub fn nest(
        &self,
        flat: &RecordBatch,
        keys: &[ArrayRef],
    ) -> Result<(Vec<ArrayRef>, BooleanArray)> {
        // Without key columns, one key holds every row.
        let (n, owner) = match keys.first() {
            None => (1, vec![0; flat.num_rows()]),
            Some(first) => {
                let converter = RowConverter::new(
                    keys.iter()
                        .map(|k| SortField::new(k.data_type().clone()))
                        .collect(),
                )?;
                let key_rows = converter.convert_columns(keys)?;
                let index: HashMap<_, usize> =
                    key_rows.iter().enumerate().map(|(i, r)| (r, i)).collect();
                let flat_keys: Vec<ArrayRef> = self
                    .keys
                    .iter()
                    .map(|i| Arc::clone(flat.column(*i)))
                    .collect();
                let flat_rows = converter.convert_columns(&flat_keys)?;
                let mut owner = Vec::with_capacity(flat.num_rows());
                for r in flat_rows.iter() {
                    match index.get(&r) {
                        Some(o) => owner.push(*o),
                        None => {
                            return crate::internal_err!(
                                "a nested row's key is not among the keys"
                            );
                        }
                    }
                }
                (first.len(), owner)
            }
        };
        self.nest_by(flat, &owner, n)
    }

    /// The rows of `flat` as one list row per key `0..n`, row `i` belonging to key
    /// `owner[i]` (kept in their order within a key), and which keys have any row.
    pub fn nest_by(
        &self,
        flat: &RecordBatch,
        owner: &[usize],
        n: usize,
    ) -> Result<(Vec<ArrayRef>, BooleanArray)> {
        let mut offsets = vec![0i32; n + 1];
        for o in owner {
            offsets[o + 1] += 1;
        }
        let keep: BooleanArray = offsets[1..].iter().map(|c| Some(*c > 0)).collect();
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let mut next = offsets.clone();
        let mut order = vec![0u32; owner.len()];
        for (row, o) in owner.iter().enumerate() {
            order[next[*o] as usize] = row as u32;
            next[*o] += 1;
        }
        let order = UInt32Array::from(order);
        let offsets = OffsetBuffer::new(offsets.into());
        let lists = self
            .lists
            .iter()
            .zip(&self.items)
            .map(|(c, item)| -> Result<ArrayRef> {
                let values = take(flat.column(*c).as_ref(), &order, None)?;
                Ok(Arc::new(ListArray::try_new(
                    Arc::clone(item),
                    offsets.clone(),
                    values,
                    None,
                )?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((lists, keep))
    }

    /// Flat rows as store rows (keys, lists): each key once.
    pub fn nest_all(&self, flat: &RecordBatch) -> Result<RecordBatch> {
        let flat_keys: Vec<ArrayRef> = self
            .keys
            .iter()
            .map(|i| Arc::clone(flat.column(*i)))
            .collect();
        let keys = if flat_keys.is_empty() {
            Vec::new()
        } else {
            let converter = RowConverter::new(
                flat_keys
                    .iter()
                    .map(|k| SortField::new(k.data_type().clone()))
                    .collect(),
            )?;
            let rows = converter.convert_columns(&flat_keys)?;
            let mut seen = std::collections::HashSet::new();
            let firsts: Vec<u32> = (0..rows.num_rows())
                .filter(|i| seen.insert(rows.row(*i)))
                .map(|i| i as u32)
                .collect();
            let firsts = UInt32Array::from(firsts);
            flat_keys
                .iter()
                .map(|k| take(k.as_ref(), &firsts, None))
                .collect::<std::result::Result<Vec<_>, _>>()?
        };
        let (lists, _) = self.nest(flat, &keys)?;
        let mut columns = keys;
        columns.extend(lists);
        let fields: Vec<FieldRef> = self
            .key_fields()
            .into_iter()
            .chain(self.list_fields())
            .collect();
        Ok(RecordBatch::try_new(
            Arc::new(datafusion::arrow::datatypes::Schema::new(fields)),
            columns,
        )?)
    }
}

/// Per list row of `lists`, the lowest of `values(list values)` over its elements.
pub(crate) fn min_per_list(
    lists: &ArrayRef,
    values: impl Fn(&ArrayRef) -> Result<datafusion::arrow::array::Int64Array>,
) -> Result<Vec<Option<i64>>> {
    let lists = lists.as_list::<i32>();
    let v = values(lists.values())?;
    Ok(lists
        .offsets()
        .windows(2)
        .map(|w| {
            (w[0] as usize..w[1] as usize)
                .filter(|i| v.is_valid(*i))
                .map(|i| v.value(i))
                .min()
        })
        .collect())
}
