//! [`SignedMultiset`]: an aggregate that can take a value back out. Each group keeps
//! its values with a count — `+1` for a row added, `-1` for a row retracted (the
//! second argument, the row's sign) — and a value whose count reaches 0 leaves it. The
//! result is computed over the values present, so `MIN`, `MAX` and the `DISTINCT`
//! aggregates over a changelog are exact: a retracted maximum gives way to the next
//! one (Flink's `MaxWithRetractAggFunction` keeps the same map).
//!
//! ```text
//!  (x, sign) rows ─▶ value (row format, ordered) → count  ─▶ MIN: first, MAX: last,
//!                                                           COUNT/SUM/AVG: of the set
//!  state: two lists per group, the values and their counts (merged by adding)
//! ```
//!
//! The values are kept in Arrow's row format, whose bytes sort as the values do, in
//! a `BTreeMap`: `MIN` and `MAX` read one end, and the stored state is in order.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, ListArray, PrimitiveArray, new_empty_array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::{cast, sum};
use datafusion::arrow::datatypes::{
    ArrowPrimitiveType, DataType, Decimal128Type, Field, FieldRef, Float64Type, Int64Type,
    UInt64Type,
};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{ScalarValue, exec_err, not_impl_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};

/// What a [`SignedMultiset`] computes over the values present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Over {
    Min,
    Max,
    /// `COUNT(DISTINCT x)`.
    Count,
    /// `SUM(DISTINCT x)`, typed as `SUM`'s result.
    Sum,
    /// `AVG(DISTINCT x)`, as a `DOUBLE`.
    Avg,
}

impl Over {
    const ALL: [Over; 5] = [Over::Min, Over::Max, Over::Count, Over::Sum, Over::Avg];

    fn name(self) -> &'static str {
        match self {
            Over::Min => "__flumen_signed_min",
            Over::Max => "__flumen_signed_max",
            Over::Count => "__flumen_signed_count_distinct",
            Over::Sum => "__flumen_signed_sum_distinct",
            Over::Avg => "__flumen_signed_avg_distinct",
        }
    }

    /// Its number in a plan sent to a cluster's executors.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Over> {
        Over::ALL.into_iter().find(|o| o.code() == code)
    }
}

/// The aggregate `f(x, sign)` (see the module).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SignedMultiset {
    over: Over,
    signature: Signature,
}

impl SignedMultiset {
    pub fn over(&self) -> Over {
        self.over
    }
}

/// The aggregate function computing `over` of a group's values present.
pub fn signed_multiset(over: Over) -> Arc<AggregateUDF> {
    Arc::new(AggregateUDF::new_from_impl(SignedMultiset {
        over,
        signature: Signature::any(2, Volatility::Immutable),
    }))
}

/// `SUM`'s result type for values of type `t` (DataFusion's), where the set can sum.
fn sum_type(t: &DataType) -> datafusion::error::Result<DataType> {
    Ok(match t {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => DataType::Int64,
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            DataType::UInt64
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => DataType::Float64,
        DataType::Decimal128(p, s) => DataType::Decimal128(38.min(*p + 10), *s),
        other => return not_impl_err!("SUM(DISTINCT) of {other} over a changelog"),
    })
}

impl AggregateUDFImpl for SignedMultiset {
    fn name(&self) -> &str {
        self.over.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        let Some(t) = arg_types.first() else {
            return exec_err!("{} takes a value and a sign", self.name());
        };
        Ok(match self.over {
            Over::Min | Over::Max => t.clone(),
            Over::Count => DataType::Int64,
            Over::Sum => sum_type(t)?,
            Over::Avg => {
                if !t.is_numeric() {
                    return not_impl_err!("AVG(DISTINCT) of {t} over a changelog");
                }
                DataType::Float64
            }
        })
    }

    fn is_nullable(&self) -> bool {
        self.over != Over::Count
    }

    fn state_fields(&self, args: StateFieldsArgs) -> datafusion::error::Result<Vec<FieldRef>> {
        let value = args.input_fields[0].data_type().clone();
        Ok(vec![
            Arc::new(Field::new_list(
                format_state_name(args.name, "values"),
                Field::new_list_field(value, true),
                true,
            )),
            Arc::new(Field::new_list(
                format_state_name(args.name, "counts"),
                Field::new_list_field(DataType::Int64, true),
                true,
            )),
        ])
    }

    fn accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> datafusion::error::Result<Box<dyn Accumulator>> {
        let value = args.expr_fields[0].data_type().clone();
        Ok(Box::new(MultisetAccumulator {
            over: self.over,
            converter: RowConverter::new(vec![SortField::new(value.clone())])?,
            value,
            result: args.return_type().clone(),
            counts: BTreeMap::new(),
            bytes: 0,
        }))
    }
}

/// One group's values (row format) and their counts, none of them 0.
#[derive(Debug)]
struct MultisetAccumulator {
    over: Over,
    value: DataType,
    result: DataType,
    converter: RowConverter,
    counts: BTreeMap<Box<[u8]>, i64>,
    /// The keys' bytes, for `size`.
    bytes: usize,
}

impl MultisetAccumulator {
    /// Adds `counts[i]` to each non-null `values[i]`.
    fn add(
        &mut self,
        values: &ArrayRef,
        counts: impl Fn(usize) -> i64,
    ) -> datafusion::error::Result<()> {
        let rows = self
            .converter
            .convert_columns(std::slice::from_ref(values))?;
        for i in 0..values.len() {
            if values.is_null(i) {
                continue;
            }
            let n = counts(i);
            if n == 0 {
                continue;
            }
            let row = rows.row(i);
            match self.counts.get_mut(row.as_ref()) {
                Some(c) => {
                    *c += n;
                    if *c == 0 {
                        self.bytes -= row.as_ref().len();
                        self.counts.remove(row.as_ref());
                    }
                }
                None => {
                    self.bytes += row.as_ref().len();
                    self.counts.insert(row.as_ref().into(), n);
                }
            }
        }
        Ok(())
    }

    /// The values of `keys` as one array.
    fn values<'a>(
        &self,
        keys: impl Iterator<Item = &'a [u8]>,
    ) -> datafusion::error::Result<ArrayRef> {
        let parser = self.converter.parser();
        let mut columns = self.converter.convert_rows(keys.map(|k| parser.parse(k)))?;
        Ok(columns
            .pop()
            .unwrap_or_else(|| new_empty_array(&self.value)))
    }

    /// The values present (count > 0) as one array; a count below 0 (a retraction
    /// ahead of its row, within one batch's partial state) is not a value present.
    fn present(&self) -> datafusion::error::Result<ArrayRef> {
        self.values(
            self.counts
                .iter()
                .filter(|(_, c)| **c > 0)
                .map(|(k, _)| k.as_ref()),
        )
    }

    fn one(&self, key: Option<&[u8]>) -> datafusion::error::Result<ScalarValue> {
        match key {
            Some(k) => ScalarValue::try_from_array(&self.values(std::iter::once(k))?, 0),
            None => ScalarValue::try_from(&self.value),
        }
    }
}

/// The sum of `values` cast to `T`, `None` when empty (wrapping, as `SUM` does).
fn sum_as<T: ArrowPrimitiveType>(
    values: &ArrayRef,
) -> datafusion::error::Result<Option<T::Native>> {
    let values = cast(values, &T::DATA_TYPE)?;
    let values: &PrimitiveArray<T> = values.as_primitive();
    Ok(sum(values))
}

impl Accumulator for MultisetAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion::error::Result<()> {
        let [x, sign] = values else {
            return exec_err!("{} takes a value and a sign", self.over.name());
        };
        let sign = cast(sign, &DataType::Int64)?;
        let sign: &Int64Array = sign.as_primitive();
        self.add(x, |i| if sign.is_null(i) { 1 } else { sign.value(i) })
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion::error::Result<()> {
        let [values, counts] = states else {
            return exec_err!("{}: a state of two lists expected", self.over.name());
        };
        let values: &ListArray = values.as_list();
        let counts: &ListArray = counts.as_list();
        for i in 0..values.len() {
            if values.is_null(i) || counts.is_null(i) {
                continue;
            }
            let v = values.value(i);
            let c = counts.value(i);
            let c: &Int64Array = c.as_primitive();
            self.add(&v, |j| c.value(j))?;
        }
        Ok(())
    }

    fn state(&mut self) -> datafusion::error::Result<Vec<ScalarValue>> {
        let values = self.values(self.counts.keys().map(|k| k.as_ref()))?;
        let counts: ArrayRef =
            Arc::new(Int64Array::from_iter_values(self.counts.values().copied()));
        let list = |items: ArrayRef| {
            let field = Arc::new(Field::new_list_field(items.data_type().clone(), true));
            let offsets = OffsetBuffer::from_lengths([items.len()]);
            ScalarValue::List(Arc::new(ListArray::new(field, offsets, items, None)))
        };
        Ok(vec![list(values), list(counts)])
    }

    fn evaluate(&mut self) -> datafusion::error::Result<ScalarValue> {
        let mut present = self
            .counts
            .iter()
            .filter(|(_, c)| **c > 0)
            .map(|(k, _)| k.as_ref());
        match self.over {
            Over::Min => self.one(present.next()),
            Over::Max => self.one(present.next_back()),
            Over::Count => Ok(ScalarValue::Int64(Some(present.count() as i64))),
            Over::Sum => {
                let values = self.present()?;
                match &self.result {
                    DataType::Int64 => Ok(ScalarValue::Int64(sum_as::<Int64Type>(&values)?)),
                    DataType::UInt64 => Ok(ScalarValue::UInt64(sum_as::<UInt64Type>(&values)?)),
                    DataType::Float64 => Ok(ScalarValue::Float64(sum_as::<Float64Type>(&values)?)),
                    DataType::Decimal128(p, s) => {
                        let t = DataType::Decimal128(*p, *s);
                        let values = cast(&values, &t)?;
                        let values: &PrimitiveArray<Decimal128Type> = values.as_primitive();
                        Ok(ScalarValue::Decimal128(sum(values), *p, *s))
                    }
                    other => not_impl_err!("SUM(DISTINCT) into {other} over a changelog"),
                }
            }
            Over::Avg => {
                let values = self.present()?;
                let n = values.len();
                Ok(ScalarValue::Float64(
                    sum_as::<Float64Type>(&values)?.map(|s| s / n as f64),
                ))
            }
        }
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.bytes + self.counts.len() * (size_of::<Box<[u8]>>() + 8 + 16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};

    fn acc(over: Over, value: DataType, result: DataType) -> MultisetAccumulator {
        MultisetAccumulator {
            over,
            converter: RowConverter::new(vec![SortField::new(value.clone())]).unwrap(),
            value,
            result,
            counts: BTreeMap::new(),
            bytes: 0,
        }
    }

    fn signs(s: &[i64]) -> ArrayRef {
        Arc::new(Int64Array::from(s.to_vec()))
    }

    #[test]
    fn a_retracted_maximum_gives_way_to_the_next_one() {
        let mut max = acc(Over::Max, DataType::Int64, DataType::Int64);
        let x: ArrayRef = Arc::new(Int64Array::from(vec![Some(3), Some(9), None, Some(9)]));
        max.update_batch(&[x, signs(&[1, 1, 1, 1])]).unwrap();
        assert_eq!(max.evaluate().unwrap(), ScalarValue::Int64(Some(9)));
        // One copy of 9 retracted: the other keeps the maximum.
        let nine: ArrayRef = Arc::new(Int64Array::from(vec![9]));
        max.update_batch(&[Arc::clone(&nine), signs(&[-1])])
            .unwrap();
        assert_eq!(max.evaluate().unwrap(), ScalarValue::Int64(Some(9)));
        max.update_batch(&[nine, signs(&[-1])]).unwrap();
        assert_eq!(max.evaluate().unwrap(), ScalarValue::Int64(Some(3)));
        let three: ArrayRef = Arc::new(Int64Array::from(vec![3]));
        max.update_batch(&[three, signs(&[-1])]).unwrap();
        assert_eq!(max.evaluate().unwrap(), ScalarValue::Int64(None));
        assert!(max.counts.is_empty());
        assert_eq!(max.bytes, 0);
    }

    #[test]
    fn the_state_merges_by_adding_counts() {
        // A batch whose partial state retracts a value another batch added.
        let mut first = acc(Over::Min, DataType::Utf8, DataType::Utf8);
        let x: ArrayRef = Arc::new(StringArray::from(vec!["b", "a", "c"]));
        first.update_batch(&[x, signs(&[1, 1, 1])]).unwrap();
        let mut second = acc(Over::Min, DataType::Utf8, DataType::Utf8);
        let a: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
        second.update_batch(&[a, signs(&[-1])]).unwrap();
        // Alone, a retraction is no value present.
        assert_eq!(second.evaluate().unwrap(), ScalarValue::Utf8(None));
        let mut merged = acc(Over::Min, DataType::Utf8, DataType::Utf8);
        for mut part in [first, second] {
            let state: Vec<ArrayRef> = part
                .state()
                .unwrap()
                .into_iter()
                .map(|s| s.to_array().unwrap())
                .collect();
            merged.merge_batch(&state).unwrap();
        }
        assert_eq!(
            merged.evaluate().unwrap(),
            ScalarValue::Utf8(Some("b".into()))
        );
        assert_eq!(merged.counts.len(), 2);
    }

    #[test]
    fn distinct_aggregates_count_each_value_present_once() {
        let x: ArrayRef = Arc::new(Int64Array::from(vec![5, 5, 7, 7, 2]));
        let s = signs(&[1, 1, 1, -1, 1]);
        let mut count = acc(Over::Count, DataType::Int64, DataType::Int64);
        count
            .update_batch(&[Arc::clone(&x), Arc::clone(&s)])
            .unwrap();
        assert_eq!(count.evaluate().unwrap(), ScalarValue::Int64(Some(2)));
        let mut total = acc(Over::Sum, DataType::Int64, DataType::Int64);
        total
            .update_batch(&[Arc::clone(&x), Arc::clone(&s)])
            .unwrap();
        assert_eq!(total.evaluate().unwrap(), ScalarValue::Int64(Some(7)));
        let mut avg = acc(Over::Avg, DataType::Int64, DataType::Float64);
        avg.update_batch(&[x, s]).unwrap();
        assert_eq!(avg.evaluate().unwrap(), ScalarValue::Float64(Some(3.5)));
    }
    #[test]
    fn each_kind_travels_by_its_code() {
        for over in Over::ALL {
            assert_eq!(Over::from_code(over.code()), Some(over));
        }
        assert_eq!(Over::from_code(200), None);
    }
}
