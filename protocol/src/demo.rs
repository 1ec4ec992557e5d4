//! The built-in demo's starting point: the files `kugetsu demo` lays out in a throwaway
//! repository and the prompt it gives, which the worker's `scripted/demo` model is written
//! against. One definition, so the two cannot drift apart.

/// Files of the throwaway repository `kugetsu demo` creates; the demo script edits them.
pub const DEMO_FILES: &[(&str, &str)] = &[
    (
        "greet.sh",
        "#!/bin/sh\n# Prints a greeting.\nname=\"${1:-world}\"\necho \"hello, $name\"\n",
    ),
    (
        "README.md",
        "# greet\n\nA tiny greeter: `sh greet.sh NAME`.\n",
    ),
];

/// The task `kugetsu demo` gives the demo script.
pub const DEMO_PROMPT: &str = "Add a --verbose flag to greet.sh that also prints the date, \
                               add a test for it, and run the test.";
