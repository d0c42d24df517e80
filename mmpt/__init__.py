"""mmpt: parameter-efficient multi-task transfer learning."""
