// Products with the frozen packed base (issue 3 fills this module).
