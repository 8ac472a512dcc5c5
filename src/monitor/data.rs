//! Training data files for `vigil profile`: CSV (optional header) and NumPy `.npy`.

use std::io::Write;
use std::path::Path;

/// A table of numbers: `shape[0]` rows, row-major values.
#[derive(Debug)]
pub struct Dataset {
    /// Column names from a CSV header.
    pub names: Option<Vec<String>>,
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

impl Dataset {
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }
}

/// Prints a progress bar on stderr for large inputs (≥ 1 MB), every 5 %.
struct Progress {
    total: usize,
    shown: usize,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress { total, shown: 0 }
    }
    fn at(&mut self, done: usize) {
        if self.total < 1 << 20 {
            return;
        }
        let pct = done * 100 / self.total.max(1);
        if pct >= self.shown + 5 || done == self.total {
            self.shown = pct;
            let bar = "#".repeat(pct / 5) + &" ".repeat(20 - pct / 5);
            eprint!("\r[{bar}] {pct:3}%");
            if done == self.total {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        }
    }
}

pub fn read(path: &Path) -> Result<Dataset, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = path.display();
    if bytes.starts_with(b"\x93NUMPY") {
        read_npy(&bytes).map_err(|e| format!("{name}: {e}"))
    } else {
        read_csv(&bytes).map_err(|e| format!("{name}: {e}"))
    }
}

fn read_csv(bytes: &[u8]) -> Result<Dataset, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "not UTF-8 text (and not a .npy file)".to_string())?;
    let mut progress = Progress::new(bytes.len());
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .peekable();
    let cells = |l: &str| -> Vec<String> {
        l.split(',')
            .map(|c| c.trim().trim_matches('"').to_string())
            .collect()
    };
    let first = lines
        .peek()
        .map(|(_, l)| cells(l))
        .ok_or("the file is empty")?;
    let header = first.iter().any(|c| c.parse::<f64>().is_err());
    let names = if header {
        lines.next();
        Some(first.clone())
    } else {
        None
    };
    let width = first.len();
    let mut values = Vec::new();
    let mut rows = 0usize;
    let mut consumed = 0usize;
    for (i, line) in lines {
        consumed += line.len() + 1;
        progress.at(consumed.min(bytes.len()));
        let row = cells(line);
        if row.len() != width {
            return Err(format!(
                "line {}: {} cells, expected {width} (ragged rows)",
                i + 1,
                row.len()
            ));
        }
        for (j, c) in row.iter().enumerate() {
            let x: f64 = c
                .parse()
                .map_err(|_| format!("line {}, column {}: '{c}' is not a number", i + 1, j + 1))?;
            values.push(x);
        }
        rows += 1;
    }
    progress.at(bytes.len());
    if rows == 0 {
        return Err("no data rows".into());
    }
    Ok(Dataset {
        names,
        shape: vec![rows, width],
        values,
    })
}

fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let i = header.find(&format!("'{key}'"))?;
    let rest = header[i + key.len() + 2..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    Some(rest)
}

fn read_npy(bytes: &[u8]) -> Result<Dataset, String> {
    if bytes.len() < 10 {
        return Err("truncated .npy header".into());
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize,
            12,
        ),
        _ => return Err(format!("unsupported .npy version {major}")),
    };
    let header = bytes
        .get(start..start + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated .npy header")?;
    let descr = header_value(header, "descr")
        .and_then(|r| r.strip_prefix('\'')?.split('\'').next())
        .ok_or("no descr in the .npy header")?;
    if header_value(header, "fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err(
            "Fortran-ordered arrays are not supported (save with np.ascontiguousarray)".into(),
        );
    }
    let shape_text = header_value(header, "shape")
        .and_then(|r| r.strip_prefix('(')?.split(')').next())
        .ok_or("no shape in the .npy header")?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("bad shape '{shape_text}'")))
        .collect::<Result<_, _>>()?;
    let data = &bytes[start + hlen..];
    let count: usize = shape.iter().product();
    macro_rules! decode {
        ($t:ty) => {{
            let size = std::mem::size_of::<$t>();
            if data.len() < count * size {
                return Err(format!(
                    "truncated data: {} bytes for {count} values of {descr}",
                    data.len()
                ));
            }
            let mut progress = Progress::new(count * size);
            data[..count * size]
                .chunks_exact(size)
                .enumerate()
                .map(|(i, c)| {
                    if i % 65536 == 0 {
                        progress.at(i * size);
                    }
                    <$t>::from_le_bytes(c.try_into().expect("chunk size")) as f64
                })
                .collect::<Vec<f64>>()
        }};
    }
    let values = match descr {
        "<f4" => decode!(f32),
        "<f8" => decode!(f64),
        "|i1" | "<i1" => decode!(i8),
        "|u1" | "<u1" => decode!(u8),
        "<i2" => decode!(i16),
        "<u2" => decode!(u16),
        "<i4" => decode!(i32),
        "<u4" => decode!(u32),
        "<i8" => decode!(i64),
        "<u8" => decode!(u64),
        "|b1" => data.iter().take(count).map(|&b| f64::from(b)).collect(),
        other => {
            return Err(format!(
                "unsupported dtype {other} (numbers in little-endian order only)"
            ))
        }
    };
    if shape.is_empty() || shape[0] == 0 {
        return Err("the array has no rows".into());
    }
    Ok(Dataset {
        names: None,
        shape,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_and_without_header() {
        let d = read_csv(b"a,b\n1,2\n3,4.5\n").unwrap();
        assert_eq!(d.names, Some(vec!["a".into(), "b".into()]));
        assert_eq!(
            (d.shape.clone(), d.values.clone()),
            (vec![2, 2], vec![1.0, 2.0, 3.0, 4.5])
        );
        let d = read_csv(b"1,2\n3,4\n").unwrap();
        assert!(d.names.is_none());
        assert!(read_csv(b"a,b\n1,2\n3\n")
            .unwrap_err()
            .contains("line 3: 1 cells, expected 2"));
        assert!(read_csv(b"1,2\n3,x\n")
            .unwrap_err()
            .contains("'x' is not a number"));
        assert!(read_csv(b"").is_err());
    }

    #[test]
    fn reads_the_sample_npy() {
        let d =
            read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/iris/1/train.npy")).unwrap();
        assert_eq!(d.shape, vec![150, 4]);
        assert!((d.values[0] - 5.1).abs() < 1e-6);
    }
}
