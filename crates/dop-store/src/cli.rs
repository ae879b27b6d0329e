//! The plan commands, one implementation for every tool: `add`, `update`, `list`, `remove`,
//! `versions`, `diff`, `export`, `show`, `import-store`.
