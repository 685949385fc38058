//! `CREATE FUNCTION`: scalar functions written in SQL, one expression of their
//! parameters (PostgreSQL's `RETURN expr`, DuckDB's macros).
//!
//! ```sql
//! CREATE FUNCTION count_char(s TEXT, c TEXT) RETURNS BIGINT
//!   RETURN length(s) - length(replace(s, c, ''));
//! ```
//!
//! A definition becomes a [`SqlFunction`], registered with the session's DataFusion
//! context. A query over streams has every call replaced by the body before it is
//! planned ([`inline`]): operators, checkpoints' fingerprints and the executors of a
//! cluster see plain expressions. Batch queries get the same from
//! DataFusion's simplifier ([`SqlFunction`]'s `simplify`), and a call evaluated
//! without either runs the body's physical expression.
//!
//! Flink's form, `CREATE FUNCTION name AS 'a.java.Class' [LANGUAGE JAVA]`, names code
//! Flumen cannot load: it is refused with a SQL definition to write instead.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{Column, DFSchema};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::ExprSchemable;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl,
    Signature, Volatility,
};
use datafusion::physical_expr::PhysicalExpr;

use flumen_engine::{Error, Result};

/// A function defined by `CREATE FUNCTION`: its parameters' types, its result's, and
/// its body over the parameters `$1`, `$2`, ... (named parameters are numbered when
/// the definition is read).
#[derive(Debug)]
pub struct SqlFunction {
    name: String,
    signature: Signature,
    params: Vec<DataType>,
    returns: DataType,
    /// The body as written, over `Expr::Placeholder`s `$1`..`$n`, cast to `returns`.
    body: Expr,
    /// The body over columns `$1`..`$n` of [`Self::schema`], type-coerced: what a
    /// call evaluates when it is not inlined.
    physical: Arc<dyn PhysicalExpr>,
    schema: Arc<Schema>,
    /// The definition's text: two functions are equal when their names and
    /// definitions are (DataFusion compares UDFs).
    definition: String,
}

impl PartialEq for SqlFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.definition == other.definition
    }
}

impl Eq for SqlFunction {}

impl Hash for SqlFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.definition.hash(state);
    }
}

fn placeholder_index(id: &str) -> Option<usize> {
    id.strip_prefix('$')?.parse::<usize>().ok()?.checked_sub(1)
}

/// `expr` with `$i` replaced by `with(i)`.
fn substitute(expr: Expr, with: &dyn Fn(usize) -> Option<Expr>) -> Result<Expr> {
    Ok(expr
        .transform(|e| match &e {
            Expr::Placeholder(p) => match placeholder_index(&p.id).and_then(with) {
                Some(arg) => Ok(Transformed::yes(arg)),
                None => Ok(Transformed::no(e)),
            },
            _ => Ok(Transformed::no(e)),
        })
        .data()?)
}

impl SqlFunction {
    /// A function `name(params) RETURNS returns` whose body (over `$1`..`$n`) is
    /// `body`; checked by planning it over the parameters' types.
    pub fn try_new(
        state: &SessionState,
        name: &str,
        params: Vec<DataType>,
        returns: DataType,
        body: Expr,
        definition: String,
    ) -> Result<Self> {
        // One walk: a `$n` past the parameters, or what is not a scalar expression.
        let (mut unknown, mut not_scalar) = (None, false);
        body.apply(|e| {
            match e {
                Expr::Placeholder(p)
                    if placeholder_index(&p.id).is_none_or(|i| i >= params.len()) =>
                {
                    unknown.get_or_insert_with(|| p.id.clone());
                }
                Expr::AggregateFunction(_)
                | Expr::WindowFunction(_)
                | Expr::ScalarSubquery(_)
                | Expr::Exists(_)
                | Expr::InSubquery(_) => not_scalar = true,
                _ => {}
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })?;
        if let Some(id) = unknown {
            return Err(Error::Plan(format!(
                "function '{name}': its body uses {id}, but it has {} parameter{}",
                params.len(),
                if params.len() == 1 { "" } else { "s" }
            )));
        }
        if not_scalar {
            return Err(Error::Plan(format!(
                "function '{name}': its body must be a scalar expression of its parameters: no \
                 aggregate, window function or subquery"
            )));
        }
        // Functions defined earlier are part of this one's body from now on; the
        // names DataFusion gives a call of an alias (`length` is `character_length`)
        // are dropped, or they would name the columns of the calls.
        let body =
            inline_expr(body.unalias_nested().data)?.cast_to(&returns, &DFSchema::empty())?;
        let body = match body {
            // `cast_to` keeps an expression already of the type: cast explicitly so
            // the result's type is the declared one whatever the body's is.
            Expr::Cast(_) => body,
            other => Expr::Cast(datafusion::logical_expr::Cast::new(
                Box::new(other),
                returns.clone(),
            )),
        };
        let schema = Arc::new(Schema::new(
            params
                .iter()
                .enumerate()
                .map(|(i, t)| Field::new(format!("${}", i + 1), t.clone(), true))
                .collect::<Vec<_>>(),
        ));
        let over_columns = substitute(body.clone(), &|i| {
            Some(Expr::Column(Column::new_unqualified(format!("${}", i + 1))))
        })?;
        let df_schema = DFSchema::try_from(Arc::clone(&schema))?;
        let physical = state
            .create_physical_expr(over_columns, &df_schema)
            .map_err(|e| Error::Plan(format!("function '{name}': its body: {e}")))?;
        let volatility = if body.is_volatile() {
            Volatility::Volatile
        } else {
            Volatility::Immutable
        };
        Ok(Self {
            name: name.to_string(),
            signature: Signature::user_defined(volatility),
            params,
            returns,
            body,
            physical,
            schema,
            definition,
        })
    }

    /// The body of a call with these arguments.
    fn expand(&self, args: Vec<Expr>) -> Result<Expr> {
        let params = &self.params;
        substitute(self.body.clone(), &|i| {
            let arg = args.get(i)?.clone();
            Some(Expr::Cast(datafusion::logical_expr::Cast::new(
                Box::new(arg),
                params[i].clone(),
            )))
        })
    }
}

impl ScalarUDFImpl for SqlFunction {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(self.returns.clone())
    }

    /// Any argument that casts to its parameter's type (a literal `1` to an `INT`),
    /// as PostgreSQL's assignment casts.
    fn coerce_types(&self, arg_types: &[DataType]) -> datafusion::error::Result<Vec<DataType>> {
        if arg_types.len() != self.params.len() {
            return datafusion::common::plan_err!(
                "function '{}' takes {} argument{} ({}), not {}",
                self.name,
                self.params.len(),
                if self.params.len() == 1 { "" } else { "s" },
                self.params
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                arg_types.len()
            );
        }
        for (i, (given, wanted)) in arg_types.iter().zip(&self.params).enumerate() {
            if !datafusion::arrow::compute::can_cast_types(given, wanted) {
                return datafusion::common::plan_err!(
                    "function '{}': argument {} is {given}, which does not cast to its \
                     parameter's type {wanted}",
                    self.name,
                    i + 1
                );
            }
        }
        Ok(self.params.clone())
    }

    fn return_field_from_args(
        &self,
        _args: ReturnFieldArgs,
    ) -> datafusion::error::Result<FieldRef> {
        // Nullable whatever the body: the inlined body may be nullable where the
        // call is not, never the other way round.
        Ok(Arc::new(Field::new(&self.name, self.returns.clone(), true)))
    }

    fn simplify(
        &self,
        args: Vec<Expr>,
        _info: &SimplifyContext,
    ) -> datafusion::error::Result<ExprSimplifyResult> {
        let expanded = self
            .expand(args)
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        Ok(ExprSimplifyResult::Simplified(expanded))
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let n = args.number_rows;
        let columns = args
            .args
            .iter()
            .map(|a| a.to_array(n))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let batch = RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )?;
        self.physical.evaluate(&batch)
    }
}

/// The SQL functions of `expr` replaced by their bodies.
pub fn inline_expr(expr: Expr) -> Result<Expr> {
    Ok(expr
        .transform_up(|e| {
            if let Expr::ScalarFunction(ScalarFunction { func, args }) = &e
                && let Some(f) = func.inner().downcast_ref::<SqlFunction>()
            {
                let expanded = f
                    .expand(args.clone())
                    .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
                return Ok(Transformed::yes(expanded));
            }
            Ok(Transformed::no(e))
        })
        .data()?)
}

/// `plan` with every call of a SQL function replaced by its body (schemas
/// recomputed: a body's nullability may differ from the call's).
pub fn inline(plan: LogicalPlan) -> Result<LogicalPlan> {
    if !plan_has_sql_function(&plan)? {
        return Ok(plan);
    }
    Ok(plan
        .transform_up_with_subqueries(|node| {
            // A call's column keeps its name (`count_char(extra, Utf8("c"))`), as
            // DataFusion's simplifier keeps it.
            let names = NamePreserver::new(&node);
            let node = node.map_expressions(|e| {
                let name = names.save(&e);
                inline_expr(e)
                    .map(|e| Transformed::yes(name.restore(e)))
                    .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
            })?;
            Ok(Transformed::yes(node.data.recompute_schema()?))
        })
        .data()?)
}

fn plan_has_sql_function(plan: &LogicalPlan) -> Result<bool> {
    let mut found = false;
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::ScalarFunction(ScalarFunction { func, .. }) = e
                    && func.inner().is::<SqlFunction>()
                {
                    found = true;
                }
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(found)
}

/// A `CREATE FUNCTION` statement read: the function's name, whether it may replace
/// one, and the statement for DataFusion to plan, its body an expression over
/// `$1`..`$n` (named parameters numbered).
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub name: String,
    pub or_replace: bool,
    /// `CREATE FUNCTION IF NOT EXISTS`: an existing function of the name is kept.
    pub if_not_exists: bool,
    pub statement: Box<datafusion::sql::sqlparser::ast::Statement>,
    pub text: String,
}

/// Reads `CREATE [OR REPLACE] [TEMPORARY] FUNCTION name(params) RETURNS type RETURN
/// expr` (or `AS expr`, or `AS 'expr'` / `AS $$expr$$` / `AS 'SELECT expr'` with
/// `LANGUAGE SQL`). Flink's `CREATE FUNCTION name AS 'class'` is refused.
pub fn parse_create_function(sql: &str) -> Result<Definition> {
    use datafusion::sql::sqlparser::ast::{
        self, CreateFunctionBody, Statement, Value, visit_expressions_mut,
    };
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::parser::Parser;
    use datafusion::sql::sqlparser::tokenizer::Token;
    use std::ops::ControlFlow;

    let dialect = GenericDialect {};
    let syntax = |e: &dyn std::fmt::Display| Error::Plan(format!("syntax error: {e}"));
    // Flink's (and Hive's) form names a class: told apart by `AS` right after the name.
    let if_not_exists;
    {
        let mut p = Parser::new(&dialect)
            .try_with_sql(sql)
            .map_err(|e| syntax(&e))?;
        p.expect_keyword(Keyword::CREATE).map_err(|e| syntax(&e))?;
        let _ = p.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
        let _ = p.parse_keyword(Keyword::TEMPORARY);
        let _ = p.parse_keyword(Keyword::SYSTEM);
        p.expect_keyword(Keyword::FUNCTION)
            .map_err(|e| syntax(&e))?;
        if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        let name = p.parse_object_name(false).map_err(|e| syntax(&e))?;
        if p.parse_keyword(Keyword::AS) {
            let class = match p.next_token().token {
                Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => s,
                other => other.to_string(),
            };
            return Err(Error::Plan(format!(
                "CREATE FUNCTION {name} AS '{class}' names a class to load (Flink's form): Flumen \
                 loads no Java, Scala or Python code. Write the function in SQL, one expression \
                 of its parameters: CREATE FUNCTION {name}(a TEXT, b TEXT) RETURNS BIGINT \
                 RETURN <expression of a and b>"
            )));
        }
    }
    // sqlparser's generic dialect does not read `IF NOT EXISTS` after FUNCTION: taken
    // out of the text, remembered above.
    let text = if if_not_exists {
        let words = regex::Regex::new(r"(?is)^(\s*CREATE\b.*?\bFUNCTION\s+)IF\s+NOT\s+EXISTS\s+")
            .expect("a valid pattern");
        words.replace(sql, "$1").into_owned()
    } else {
        sql.to_string()
    };
    let mut statement = Parser::new(&dialect)
        .try_with_sql(&text)
        .and_then(|mut p| p.parse_statement())
        .map_err(|e| syntax(&e))?;
    let Statement::CreateFunction(f) = &mut statement else {
        return Err(Error::Plan(
            "syntax error: expected CREATE FUNCTION name(parameters) RETURNS type RETURN expression"
                .into(),
        ));
    };
    let name = f.name.to_string();
    if let Some(language) = &f.language
        && !language.value.eq_ignore_ascii_case("sql")
    {
        return Err(Error::Plan(format!(
            "function '{name}': LANGUAGE {language}: Flumen runs functions written in SQL only \
             (RETURN expression)"
        )));
    }
    if f.return_type.is_none() {
        return Err(Error::Plan(format!(
            "function '{name}': RETURNS <type> is missing (the type of the function's result)"
        )));
    }
    let params = f.args.clone().unwrap_or_default();
    let mut names = Vec::new();
    for (i, a) in params.iter().enumerate() {
        if a.default_expr.is_some() {
            return Err(Error::Plan(format!(
                "function '{name}': parameter {} has a default value; every parameter must be \
                 given in each call",
                i + 1
            )));
        }
        if let Some(n) = &a.name {
            let n = if n.quote_style.is_some() {
                n.value.clone()
            } else {
                n.value.to_ascii_lowercase()
            };
            if names.iter().any(|(m, _)| *m == n) {
                return Err(Error::Plan(format!(
                    "function '{name}': two parameters are named '{n}'"
                )));
            }
            names.push((n, i + 1));
        }
    }
    let body = match f.function_body.as_mut() {
        Some(CreateFunctionBody::Return(e))
        | Some(CreateFunctionBody::AsAfterOptions(e))
        | Some(CreateFunctionBody::AsBeforeOptions { body: e, .. }) => e,
        Some(_) => {
            return Err(Error::Plan(format!(
                "function '{name}': its body must be one expression (RETURN expression)"
            )));
        }
        None => {
            return Err(Error::Plan(format!(
                "function '{name}': it has no body (RETURN expression)"
            )));
        }
    };
    // A body given as text (PostgreSQL's `AS 'SELECT $1 + $2'`) is read as SQL.
    if let ast::Expr::Value(v) = &*body
        && let Value::SingleQuotedString(text)
        | Value::DollarQuotedString(ast::DollarQuotedString { value: text, .. }) = &v.value
    {
        let text = text.trim().trim_end_matches(';').trim().to_string();
        let mut p = Parser::new(&dialect)
            .try_with_sql(&text)
            .map_err(|e| syntax(&e))?;
        let _ = p.parse_keyword(Keyword::SELECT);
        let e = p.parse_expr().map_err(|e| {
            Error::Plan(format!(
                "function '{name}': its body '{text}': syntax error: {e}"
            ))
        })?;
        if p.peek_token().token != Token::EOF {
            return Err(Error::Plan(format!(
                "function '{name}': its body '{text}' must be one expression (a SELECT of one \
                 value, without FROM)"
            )));
        }
        *body = e;
    }
    let mut unknown = None;
    let _ = visit_expressions_mut(body, |e: &mut ast::Expr| {
        if let ast::Expr::Identifier(id) = e {
            let n = if id.quote_style.is_some() {
                id.value.clone()
            } else {
                id.value.to_ascii_lowercase()
            };
            match names.iter().find(|(m, _)| *m == n) {
                Some((_, i)) => {
                    *e = ast::Expr::Value(Value::Placeholder(format!("${i}")).into());
                }
                None => {
                    unknown.get_or_insert(n);
                }
            }
        } else if let ast::Expr::CompoundIdentifier(parts) = e {
            unknown.get_or_insert(
                parts
                    .iter()
                    .map(|p| p.value.clone())
                    .collect::<Vec<_>>()
                    .join("."),
            );
        }
        ControlFlow::<()>::Continue(())
    });
    if let Some(n) = unknown {
        let listed = names
            .iter()
            .map(|(m, _)| m.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Error::Plan(format!(
            "function '{name}': '{n}' in its body is not one of its parameters ({})",
            if listed.is_empty() {
                "it has no named ones"
            } else {
                &listed
            }
        )));
    }
    // DataFusion reads the parameters' names as well: positional from here on.
    if let Some(args) = f.args.as_mut() {
        for a in args {
            a.name = None;
        }
    }
    let or_replace = f.or_replace;
    Ok(Definition {
        name: if f.name.0.len() == 1 {
            match f.name.0[0].as_ident() {
                Some(id) if id.quote_style.is_some() => id.value.clone(),
                Some(id) => id.value.to_ascii_lowercase(),
                None => name,
            }
        } else {
            return Err(Error::Plan(format!(
                "function '{name}': a function's name has no schema or catalog"
            )));
        },
        or_replace,
        if_not_exists,
        statement: Box::new(statement),
        text: sql.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// A call no optimizer pass inlines (DataFusion's optimizer off, the query not
    /// Flumen's) runs the body's physical expression: the same values.
    #[tokio::test]
    async fn a_call_not_inlined_evaluates_the_body() {
        let mut config = SessionConfig::new();
        config.options_mut().optimizer.max_passes = 0;
        let ctx = SessionContext::new_with_config(config);
        let definition = parse_create_function(
            "CREATE FUNCTION count_char(s TEXT, c TEXT) RETURNS BIGINT \
             RETURN length(s) - length(replace(s, c, ''))",
        )
        .unwrap();
        let plan = ctx
            .state()
            .statement_to_plan(datafusion::sql::parser::Statement::Statement(
                definition.statement,
            ))
            .await
            .unwrap();
        let LogicalPlan::Ddl(datafusion::logical_expr::DdlStatement::CreateFunction(f)) = plan
        else {
            panic!("{plan}")
        };
        let params = f.args.unwrap().into_iter().map(|a| a.data_type).collect();
        let function = SqlFunction::try_new(
            &ctx.state(),
            "count_char",
            params,
            f.return_type.unwrap(),
            f.params.function_body.unwrap(),
            definition.text,
        )
        .unwrap();
        ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(function));
        let df = ctx
            .sql("SELECT count_char(s, 'c') AS n FROM (VALUES ('cc'), ('c'), (NULL), ('abc')) AS v(s)")
            .await
            .unwrap();
        let plan = df.clone().into_optimized_plan().unwrap();
        assert!(plan.to_string().contains("count_char("), "{plan}");
        let batches = df.collect().await.unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        let values: Vec<&str> = text
            .lines()
            .skip(3)
            .filter(|l| l.starts_with('|'))
            .map(|l| l.trim_matches(|c| c == '|' || c == ' '))
            .collect();
        assert_eq!(values, ["2", "1", "", "1"]);
    }
}
