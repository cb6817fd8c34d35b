const express = require("express");
const app = express();
app.get("/", (req, res) => res.send("hello from the bench\n"));
app.listen(process.env.PORT || 3000);
