//! Region fields (a phone rule's `region_field`): the moves from the start of a record's
//! binary to the string that names its phone region, so the fast path reads it before the
//! walk, whatever the field order.

use apache_avro::schema::RecordSchema;
use apache_avro::Schema;

use super::walker::Walker;
use super::Locate;

impl Walker<'_> {
    /// The index of the region field of the phone rule at `path`, if it names one.
    pub(super) fn region_index(&self, path: &str) -> Option<usize> {
        let region = self.rules.region_field(path)?;
        self.region_paths.iter().position(|p| *p == region)
    }

    /// The moves from the start of `root` to the string at `path`, or why there is none.
    pub(super) fn locate(
        &mut self,
        root: &RecordSchema,
        path: &str,
    ) -> Result<Vec<Locate>, String> {
        self.locate_in(root, path, true)
    }

    /// The moves from the start of `root` to the value at `path`, whatever its type (a
    /// nullable record on the way is followed into its record), or why there is none.
    pub(super) fn locate_value(
        &mut self,
        root: &RecordSchema,
        path: &str,
    ) -> Result<Vec<Locate>, String> {
        self.locate_in(root, path, false)
    }

    fn locate_in(
        &mut self,
        root: &RecordSchema,
        path: &str,
        string: bool,
    ) -> Result<Vec<Locate>, String> {
        let mut steps = Vec::new();
        let mut record = root.clone();
        let mut names = path.split('.').peekable();
        while let Some(name) = names.next() {
            let last = names.peek().is_none();
            let Some(position) = record.fields.iter().position(|f| f.name == name) else {
                return Err("names no field".to_owned());
            };
            for before in &record.fields[..position] {
                let shape = self.shape(&before.schema, path, 0);
                steps.push(Locate::Skip(shape));
            }
            let mut schema = self.resolve(&record.fields[position].schema).clone();
            if last && !string {
                let shape = self.shape(&schema, path, 0);
                steps.push(Locate::Value(shape));
                break;
            }
            // A nullable value: follow its one other branch.
            if let Schema::Union(union) = &schema {
                let variants = union.variants();
                let others: Vec<usize> = (0..variants.len())
                    .filter(|&i| !matches!(variants[i], Schema::Null))
                    .collect();
                let [branch] = others[..] else {
                    return Err("is a union of several types".to_owned());
                };
                steps.push(Locate::Branch(branch));
                schema = self.resolve(&variants[branch]).clone();
            }
            match (schema, last) {
                (Schema::String, true) => steps.push(Locate::String),
                (Schema::Record(inner), false) => record = inner,
                (_, true) => return Err("is not a string".to_owned()),
                (_, false) => return Err("crosses a field that is not a record".to_owned()),
            }
        }
        Ok(steps)
    }
}
