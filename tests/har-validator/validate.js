// Usage: node validate.js FILE.har — exit 0 if FILE is valid HAR 1.2,
// else print the schema errors and exit 1.
const fs = require('fs');
const validate = require('har-validator');

const har = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
validate.har(har).then(
  () => {
    console.log(`valid HAR ${har.log.version}: ${har.log.entries.length} entries`);
  },
  (e) => {
    console.error(JSON.stringify(e.errors || e.message, null, 2));
    process.exit(1);
  },
);
