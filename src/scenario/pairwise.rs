//! Pairwise (all-pairs) combinations for a flag matrix: few rows such that every pair of
//! values of any two parameters appears in at least one row, with rows that match an
//! exclusion never generated.
//!
//! The construction is IPOG (in-parameter-order generation, Lei and Tai): the rows start
//! as every combination of the first two parameters; each further parameter is added by
//! horizontal growth (each row takes the value that covers the most pairs not yet
//! covered) and then vertical growth (each pair still uncovered goes into a row whose
//! cell for the earlier parameter is still open, or into a new row). Open cells are
//! filled last. An exclusion is a partial row (`parameter -> value`); a pair that an
//! exclusion of one or two parameters contains cannot occur and is not required, and a
//! row is never completed into an exclusion. For `k` parameters of `v` values the result
//! has about `v² · log k` rows, against `v^k` for the full product.

use std::collections::BTreeMap;

/// A partial row: parameter index to value index.
pub type Partial = BTreeMap<usize, usize>;

/// Why no rows were given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooMuch {
    /// More than the rows asked for at most.
    Rows,
    /// The work the generator may do ran out (many parameters, values and exclusions).
    Work,
}

/// The most steps (row and exclusion checks) one generation may take: a few seconds.
pub const WORK: u64 = 200_000_000;

/// Counts the generator's steps against [`WORK`].
struct Budget(u64);

impl Budget {
    fn spend(&mut self, n: usize) -> Result<(), TooMuch> {
        self.0 = self.0.checked_sub(n as u64).ok_or(TooMuch::Work)?;
        Ok(())
    }
}

/// Rows (one value index per parameter) covering every allowed pair of `levels` (the
/// number of values of each parameter), none matching an exclusion; at most `max_rows`
/// of them, and within a bounded amount of work.
pub fn pairwise(levels: &[usize], exclude: &[Partial], max_rows: usize) -> Result<Vec<Vec<usize>>, TooMuch> {
    let budget = &mut Budget(WORK);
    let k = levels.len();
    if k == 0 || levels.contains(&0) {
        return Ok(Vec::new());
    }
    if k == 1 {
        let rows: Vec<Vec<usize>> = (0..levels[0]).map(|v| vec![v]).filter(|r| allowed_full(r, exclude)).collect();
        return if rows.len() > max_rows { Err(TooMuch::Rows) } else { Ok(rows) };
    }
    let allowed_pair = |i: usize, a: usize, j: usize, b: usize| {
        !exclude.iter().any(|e| e.len() <= 2 && e.iter().all(|(&p, &v)| (p == i && v == a) || (p == j && v == b)))
    };
    // Rows with open cells (None) while they grow.
    let mut rows: Vec<Vec<Option<usize>>> = Vec::new();
    for a in 0..levels[0] {
        for b in 0..levels[1] {
            if allowed_pair(0, a, 1, b) {
                rows.push(vec![Some(a), Some(b)]);
            }
        }
    }
    for i in 2..k {
        // The pairs of parameter i with every earlier parameter, still to cover.
        let mut uncovered: Vec<(usize, usize, usize)> = Vec::new();
        for j in 0..i {
            for a in 0..levels[j] {
                for b in 0..levels[i] {
                    if allowed_pair(j, a, i, b) {
                        uncovered.push((j, a, b));
                    }
                }
            }
        }
        if rows.len() > max_rows {
            return Err(TooMuch::Rows);
        }
        // Horizontal growth.
        for row in &mut rows {
            let mut best: Option<(usize, usize)> = None;
            for b in 0..levels[i] {
                budget.spend(uncovered.len() + exclude.len() + i)?;
                let mut candidate = row.clone();
                candidate.push(Some(b));
                if !consistent(&candidate, exclude) {
                    continue;
                }
                let gain = uncovered.iter().filter(|&&(j, a, v)| v == b && row[j] == Some(a)).count();
                if best.is_none_or(|(g, _)| gain > g) {
                    best = Some((gain, b));
                }
            }
            let chosen = best.map(|(_, b)| b);
            row.push(chosen);
            if let Some(b) = chosen {
                uncovered.retain(|&(j, a, v)| !(v == b && row[j] == Some(a)));
            }
        }
        // Vertical growth.
        for (j, a, b) in std::mem::take(&mut uncovered) {
            budget.spend(rows.len() * (1 + exclude.len()))?;
            if rows.len() > max_rows {
                return Err(TooMuch::Rows);
            }
            if rows.iter().any(|r| r[j] == Some(a) && r[i] == Some(b)) {
                continue;
            }
            let fits = |r: &Vec<Option<usize>>| {
                (r[j] == Some(a) || r[j].is_none()) && (r[i] == Some(b) || r[i].is_none()) && {
                    let mut c = r.clone();
                    c[j] = Some(a);
                    c[i] = Some(b);
                    consistent(&c, exclude)
                }
            };
            match rows.iter_mut().find(|r| fits(r)) {
                Some(r) => {
                    r[j] = Some(a);
                    r[i] = Some(b);
                }
                None => {
                    let mut r = vec![None; i + 1];
                    r[j] = Some(a);
                    r[i] = Some(b);
                    rows.push(r);
                }
            }
        }
    }
    // Open cells take the first value that keeps the row outside every exclusion.
    let mut out: Vec<Vec<usize>> = Vec::new();
    for r in rows {
        if let Some(full) = complete(&r, levels, exclude, budget)?
            && !out.contains(&full)
        {
            out.push(full);
        }
    }
    // A pair left out by a row that could not be completed gets a row of its own, when
    // any row can hold it (exclusions over more parameters can rule a pair out).
    for i in 0..k {
        for j in i + 1..k {
            for a in 0..levels[i] {
                for b in 0..levels[j] {
                    budget.spend(out.len())?;
                    if out.iter().any(|r| r[i] == a && r[j] == b) {
                        continue;
                    }
                    let mut r = vec![None; k];
                    r[i] = Some(a);
                    r[j] = Some(b);
                    if consistent(&r, exclude)
                        && let Some(full) = complete(&r, levels, exclude, budget)?
                    {
                        out.push(full);
                        if out.len() > max_rows {
                            return Err(TooMuch::Rows);
                        }
                    }
                }
            }
        }
    }
    if out.len() > max_rows {
        return Err(TooMuch::Rows);
    }
    Ok(out)
}

/// Whether the filled cells of `row` can still avoid every exclusion (none is wholly
/// matched by them).
fn consistent(row: &[Option<usize>], exclude: &[Partial]) -> bool {
    !exclude.iter().any(|e| e.iter().all(|(&p, &v)| row.get(p).copied().flatten() == Some(v)))
}

fn allowed_full(row: &[usize], exclude: &[Partial]) -> bool {
    !exclude.iter().any(|e| e.iter().all(|(&p, &v)| row.get(p) == Some(&v)))
}

/// `row` with its open cells filled (depth first) so that it matches no exclusion;
/// `None` when no filling does.
fn complete(
    row: &[Option<usize>],
    levels: &[usize],
    exclude: &[Partial],
    budget: &mut Budget,
) -> Result<Option<Vec<usize>>, TooMuch> {
    budget.spend(1 + exclude.len())?;
    let Some(open) = row.iter().position(Option::is_none) else {
        let full: Vec<usize> = row.iter().map(|c| c.unwrap_or(0)).collect();
        return Ok(allowed_full(&full, exclude).then_some(full));
    };
    for v in 0..levels[open] {
        let mut next = row.to_vec();
        next[open] = Some(v);
        if consistent(&next, exclude)
            && let Some(full) = complete(&next, levels, exclude, budget)?
        {
            return Ok(Some(full));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use rand::rngs::Xoshiro256PlusPlus;
    use rand::{RngExt, SeedableRng};

    use super::*;

    /// Every pair that some full row outside the exclusions could hold is in `rows`.
    fn covers_every_pair(levels: &[usize], exclude: &[Partial], rows: &[Vec<usize>]) -> Result<(), String> {
        for r in rows {
            if !allowed_full(r, exclude) {
                return Err(format!("row {r:?} matches an exclusion"));
            }
        }
        for i in 0..levels.len() {
            for j in i + 1..levels.len() {
                for a in 0..levels[i] {
                    for b in 0..levels[j] {
                        // Possible when some full row outside the exclusions holds it.
                        let possible = every_row(levels).any(|r| r[i] == a && r[j] == b && allowed_full(&r, exclude));
                        if possible && !rows.iter().any(|r| r[i] == a && r[j] == b) {
                            return Err(format!("pair ({i}={a}, {j}={b}) not covered"));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn every_row(levels: &[usize]) -> impl Iterator<Item = Vec<usize>> + '_ {
        let total: usize = levels.iter().product();
        (0..total).map(move |mut n| {
            levels
                .iter()
                .map(|&l| {
                    let v = n % l;
                    n /= l;
                    v
                })
                .collect()
        })
    }

    #[test]
    fn too_many_rows_or_too_much_work_is_said_not_waited_for() {
        assert_eq!(pairwise(&[22; 32], &[], 500), Err(TooMuch::Rows));
        assert_eq!(pairwise(&[3, 3, 3, 3], &[], 5), Err(TooMuch::Rows));
        // Without a limit on rows, the work is bounded all the same.
        assert_eq!(pairwise(&[30; 30], &[], usize::MAX), Err(TooMuch::Work));
    }

    #[test]
    fn four_flags_of_three_values_take_at_most_twelve_rows() {
        let rows = pairwise(&[3, 3, 3, 3], &[], usize::MAX).unwrap();
        assert!(rows.len() <= 12, "{} rows", rows.len());
        covers_every_pair(&[3, 3, 3, 3], &[], &rows).unwrap();
    }

    #[test]
    fn every_pair_is_covered_for_random_sizes_and_exclusions() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        for case in 0..300 {
            let k = rng.random_range(1..7usize);
            let levels: Vec<usize> = (0..k).map(|_| rng.random_range(1..5usize)).collect();
            let mut exclude = Vec::new();
            for _ in 0..rng.random_range(0..4usize) {
                // Exclusions of one, two or three parameters.
                let size = rng.random_range(1..4usize).min(k);
                let mut e = Partial::new();
                while e.len() < size {
                    let p = rng.random_range(0..k);
                    e.insert(p, rng.random_range(0..levels[p]));
                }
                exclude.push(e);
            }
            let rows = pairwise(&levels, &exclude, usize::MAX).unwrap();
            covers_every_pair(&levels, &exclude, &rows)
                .unwrap_or_else(|e| panic!("case {case} {levels:?} {exclude:?}: {e}"));
            let full: usize = levels.iter().product();
            assert!(rows.len() <= full, "case {case}: {} rows for {full} combinations", rows.len());
        }
    }
}
